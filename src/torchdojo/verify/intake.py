"""A class's submissions, made safe to grade: one folder per student, its entry file found without running it.

Each entry of SUBMISSIONS (a .py file, a folder, a .zip) is copied into its own folder under OUT/work, so a
student's `import helper` finds only their own files. Zips are extracted by hand, member by member: an
absolute name, a `..` component, a symbolic link, more than MAX_FILES members or more than MAX_BYTES in all
(what zip bombs do) refuses the whole zip with a note; folders are copied without following links. The entry
is found by parsing (never importing) the files that match the `--entry` glob.
"""

import ast
import dataclasses
import hashlib
import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from torchdojo.errors import DojoError

MAX_FILES = 500
MAX_BYTES = 32 << 20  # per student, extracted
SKIPPED = {"__MACOSX", "__pycache__", ".DS_Store", ".git", ".ipynb_checkpoints"}
FORMULA_START = ("=", "+", "-", "@")


class Refused(Exception):
    """A submission that cannot be staged; the message is the student's note."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """`--entry "GLOB:Class"`: the glob matches a file's path from the right ("*.py", "src/*.py")."""

    glob: str
    cls: str

    @classmethod
    def parse(cls, text: str) -> "Entry":
        glob, sep, name = text.rpartition(":")
        if not sep or not glob or not name.isidentifier():
            raise DojoError(f"--entry {text!r} is not GLOB:Class", 'write e.g. --entry "*.py:Conv2d"')
        return cls(glob, name)

    def __str__(self) -> str:
        return f"{self.glob}:{self.cls}"


@dataclasses.dataclass(frozen=True)
class Submission:
    student: str  # safe for a file name and a CSV cell
    source: Path  # the entry in SUBMISSIONS
    folder: Path  # OUT/work/<student>: the staged copy
    entry: Path | None  # the file to check (None: not gradable, see note)
    content_hash: str
    note: str | None

    @property
    def entry_spec(self) -> str | None:
        """The entry relative to the student's folder (what the student would type)."""
        return str(self.entry.relative_to(self.folder)) if self.entry is not None else None


def student_name(source: Path, taken: set[str]) -> str:
    """The file/folder name without .py/.zip, reduced to [A-Za-z0-9._-] (no leading dot or dash, so no
    hidden file and no spreadsheet formula), unique among `taken` (alice, alice-2, ...)."""
    stem = source.name[: -len(source.suffix)] if source.suffix.lower() in (".py", ".zip") else source.name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:64].rstrip(".") or "student"
    name, n = base, 1
    while name.lower() in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name.lower())
    return name


def _skipped(rel: PurePosixPath) -> bool:
    return any(part in SKIPPED for part in rel.parts)


def _member_path(name: str) -> PurePosixPath:
    """A zip member's name as a relative path, or Refused when it could land outside the folder."""
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise Refused(f"zip refused: member {name!r} has an absolute or Windows path")
    rel = PurePosixPath(name)
    if ".." in rel.parts:
        raise Refused(f"zip refused: member {name!r} points outside the folder ('..')")
    return rel


def extract_zip(zip_path: Path, dest: Path) -> list[str]:
    """Extract `zip_path` into `dest` under the rules above; returns notes on what was skipped."""
    notes: list[str] = []
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            if len(members) > MAX_FILES:
                raise Refused(f"zip refused: {len(members)} members (at most {MAX_FILES})")
            declared = sum(m.file_size for m in members)
            if declared > MAX_BYTES:
                raise Refused(
                    f"zip refused: it would extract to {declared / 2**20:.0f} MB (at most {MAX_BYTES >> 20} MB; "
                    "a zip bomb?)"
                )
            written = 0
            for m in members:
                rel = _member_path(m.filename)
                if _skipped(rel) or not rel.parts:
                    continue
                if stat.S_ISLNK(m.external_attr >> 16):
                    notes.append(f"symbolic link {m.filename} skipped")
                    continue
                if m.flag_bits & 0x1:
                    raise Refused(f"zip refused: {m.filename} is encrypted")
                target = dest.joinpath(*rel.parts)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_BYTES:
                            raise Refused(f"zip refused: more than {MAX_BYTES >> 20} MB extracted (a zip bomb?)")
                        dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error, ValueError) as e:
        raise Refused(f"not a readable zip ({type(e).__name__}: {e})") from None
    return notes


def copy_folder(src: Path, dest: Path) -> list[str]:
    """Copy regular files under `src` into `dest`, links (never followed) and special files skipped."""
    notes: list[str] = []
    count = size = 0
    for root, dirs, files in os.walk(src):  # os.walk does not descend into linked folders
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for name in sorted([*files, *(d for d in dirs if (here / d).is_symlink())]):
            path = here / name
            rel = path.relative_to(src).as_posix()
            mode = path.lstat().st_mode
            if name in SKIPPED or stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                notes.append(f"{rel} skipped ({'a symbolic link' if stat.S_ISLNK(mode) else 'not a regular file'})")
                continue
            count, size = count + 1, size + path.lstat().st_size
            if count > MAX_FILES or size > MAX_BYTES:
                raise Refused(f"folder refused: more than {MAX_FILES} files or {MAX_BYTES >> 20} MB")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target, follow_symlinks=False)
    return notes


def content_hash(folder: Path) -> str:
    """sha256 over the staged files' relative paths and bytes (what decides whether to grade again)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        h.update(f"{path.relative_to(folder).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _defines(path: Path, cls: str) -> tuple[str | None, list[str]]:
    """How the file binds `cls` at module level: "class" (a class statement), "name" (an assignment or an
    import, e.g. a test file's `from conv import Conv2d`), "" (not at all), None (it does not parse); and
    the classes it defines."""
    try:
        tree = ast.parse(path.read_bytes(), filename=path.name)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None, []
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return ("class" if cls in classes else "name" if cls in names else ""), classes


def find_entry(folder: Path, entry: Entry) -> tuple[Path | None, str | None]:
    """The one file matching the glob that defines the class (a class statement first, else an assignment
    or import); else (None, why). A lone candidate is taken even if it does not parse or names no such
    class: the checker then says exactly why."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and PurePosixPath(p.relative_to(folder)).match(entry.glob)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)  # macOS ._conv.py and the like
    )
    if not files:
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
        return None, f"no file matching {entry.glob!r} (found: {shown or 'nothing'})"
    if len(files) == 1:
        return files[0], None
    parsed = {f: _defines(f, entry.cls) for f in files}
    for kind in ("class", "name"):
        defining = [f for f, (how, _) in parsed.items() if how == kind]
        if len(defining) == 1:
            return defining[0], None
        if defining:
            rel = ", ".join(f.relative_to(folder).as_posix() for f in defining)
            return None, f"ambiguous entry: {entry.cls} is defined in {rel}; grade with --entry 'FILE.py:{entry.cls}'"
    broken = [f for f, (how, _) in parsed.items() if how is None]
    if len(broken) == 1:  # the class is probably in the file that does not parse: let the checker say so
        return broken[0], None
    classes = "; ".join(f"{f.relative_to(folder).as_posix()}: {', '.join(c) or 'none'}" for f, (_, c) in parsed.items())
    return None, f"no file matching {entry.glob!r} defines {entry.cls} (classes found: {classes})"


def stage(source: Path, folder: Path, student: str, entry: Entry) -> Submission:
    """Copy one student's entry into `folder` (emptied first) and find the file to check."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    notes: list[str] = []
    try:
        if source.is_symlink():
            raise Refused("refused: the submission is a symbolic link")
        if source.is_dir():
            notes += copy_folder(source, folder)
        elif source.suffix.lower() == ".zip":
            notes += extract_zip(source, folder)
        elif source.suffix.lower() == ".py" and source.is_file():
            if source.stat().st_size > MAX_BYTES:
                raise Refused(f"refused: larger than {MAX_BYTES >> 20} MB")
            shutil.copyfile(source, folder / source.name)
        else:
            raise Refused(f"not a .py file, a folder or a .zip: {source.name}")
    except Refused as e:
        shutil.rmtree(folder)
        folder.mkdir()
        return Submission(student, source, folder, None, content_hash(folder), str(e))
    path, why = find_entry(folder, entry)
    note = "; ".join([*notes, why] if why else notes) or None
    return Submission(student, source, folder, path, content_hash(folder), note)


def list_class(submissions: Path) -> list[Path]:
    """The students' entries: everything in SUBMISSIONS but hidden files and the skipped names."""
    return sorted(
        (p for p in submissions.iterdir() if not p.name.startswith(".") and p.name not in SKIPPED),
        key=lambda p: p.name,
    )


def stage_class(submissions: Path, work: Path, entry: Entry) -> list[Submission]:
    """Stage every student of `submissions` under `work` (stale student folders there are removed)."""
    taken: set[str] = set()
    work.mkdir(parents=True, exist_ok=True)
    subs = [stage(src, work / (name := student_name(src, taken)), name, entry) for src in list_class(submissions)]
    if not subs:
        raise DojoError(f"{submissions} is empty", "put one .py file, folder or .zip per student in it")
    names = {s.student for s in subs}
    for old in work.iterdir():
        if old.name not in names:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return subs


def csv_cell(value: object) -> object:
    """A CSV value that no spreadsheet runs as a formula: text starting with = + - @ (or a tab/CR) is quoted."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, "\t", "\r")):
        return "'" + value
    return value
