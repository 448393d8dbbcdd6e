"""The accelerator on FPGA boards, host side: bitstream builds (:mod:`.build`), the simulated board behind a socket
(:mod:`.sim`, ``edgespike fpga serve-sim``) and the ``fpga`` backend of ``edgespike run`` (:mod:`.host`).

The board-side driver itself is :mod:`edgespike.firmware`; the gateware is :mod:`edgespike.rtl.board`.
"""
