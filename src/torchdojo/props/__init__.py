"""Measurements of what makes a CNN a CNN (MISSION H5): locality, weight sharing, translation equivariance
and the approximate invariance pooling buys.

- `connectivity` counts the parameters of the same 3x3 feature map made by a conv layer, by a locally
  connected layer (same connections, no sharing) and by a dense layer (every input to every output);
- `measured_rf` measures a unit's receptive field from the support of its input gradient;
- `shift` / `equivariance_error` shift images and compare conv(shift(x)) with shift(conv(x)) away from the
  borders, for any layer and its stride;
- `ShiftNet` builds the small classifiers whose test accuracy under shifted images is compared.
"""

from torchdojo.props.equivariance import equivariance_error, shift
from torchdojo.props.locality import connectivity, measured_rf
from torchdojo.props.nets import VARIANTS, ShiftNet

__all__ = ["VARIANTS", "ShiftNet", "connectivity", "equivariance_error", "measured_rf", "shift"]
