"""ddjax: dataset distillation, and what distilled data holds, in JAX.

Subpackages: `ddjax.data` (datasets, preprocessing, sampling), `ddjax.models`
(ConvNet family, AlexNet, VGG-11, ResNet-18/34), `ddjax.train` (protocols A/B, the
DC protocol, evaluation), `ddjax.checkpoint` and `ddjax.workdir` (run directories).
"""

__version__ = "0.3.0"
