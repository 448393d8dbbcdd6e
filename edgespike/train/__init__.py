"""Training of the shipped spiking denoisers (needs the ``[train]`` extra: PyTorch).

:mod:`edgespike.train.qnet` is the quantisation-aware network and its exact integer views,
:mod:`edgespike.train.data` the patch sampler and the noise/PSNR protocol, :mod:`edgespike.train.loop` the
training loop; ``tools/train.py`` is the command line.
"""
