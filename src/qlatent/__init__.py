"""qlatent: discrete (quantized) latent representations behind one contract.

Dithered lattice quantization trained with dithered SGD, VQ-style bottlenecks, the models and
training loop that use them, and an evaluation harness that compares them under the same encoder,
decoder, data and budget.
"""

__version__ = "0.1.0"
