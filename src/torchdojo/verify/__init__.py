"""Autograder for hand-written layers: run a submission in a jailed child process, compare it with PyTorch here.

`sandbox.check_isolated` / `sandbox.ForkServer` are the API (`check` and `grade` use them); `targets` and
`targets_cells` define what can be checked (`options`: their names and the `Limits`, torch-free for the
command line), `cases` draws cases and computes the reference, `judge` compares what came back, `rules`
checks the assignment's rules, `jail`/`child`/`server` run the submission.
"""
