"""The CLNF as a stage protocol and the one loop that drives it.

* :mod:`.protocol` — :class:`StageOps` (the operations of one CLNF pass),
  :class:`StageHook` (what sees each stage value), :class:`Where`;
* :mod:`.loop` — :func:`fit_passes`, OpenFace's ``CLNF::Fit`` and ``NU_RLMS`` written
  once: propagated fits, isolated recomputation, impact replays, noise envelopes,
  faults and other ports all run through it;
* :mod:`.ops` — :class:`OpenFaceOps`, clnfdiag's implementation of the stages.
"""
