"""The stage protocol: the operations of one CLNF pass, and the hook that sees each stage's value.

:class:`StageOps` lists what :func:`clnfdiag.clnf.loop.fit_passes` asks of a
CLNF implementation, one method per golden stage (or per step between two
stages). clnfdiag's own CLNF implements all of them
(:class:`clnfdiag.clnf.ops.OpenFaceOps`); a known fault is a wrapper that
replaces one method (:mod:`clnfdiag.faults`); another port overrides the
ones it computes and inherits clnfdiag's for the rest, which are then "not
produced" by it (:mod:`clnfdiag.ports`; the README's "Write a port adapter").

Arrays follow the golden format: landmark arrays ``(n, 2)`` float32 with
columns ``(x, y)``; maps ``(n, w, w)`` float32 row-major, zeros for the
landmarks not visible in the view; parameters ``(6,)`` and ``(m,)`` float32.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import numpy as np


class Where(NamedTuple):
    """Where a stage value comes from in the fit; :mod:`clnfdiag.keys` turns it into a golden key.

    Attributes
    ----------
    name : str
        The stage (``response``, ``mean_shifts``) or, outside the passes, the
        whole key (``input/gray``, ``final/landmarks``).
    pass_index, phase, iteration : int, str, int or None
        ``pass0/rigid/iter02/...``: the parts that apply.
    """

    name: str
    pass_index: int | None = None
    phase: str | None = None
    iteration: int | None = None


class StageHook:
    """Sees every stage value the loop computes; may hand back another one.

    The base class is the hook of an untraced fit: ``enabled`` is False, so the
    loop never builds a key or calls :meth:`stage`.
    """

    enabled = False

    def stage(self, where: Where, value: Any, dtype: Any = None) -> Any:
        """Called with each computed stage value.

        Parameters
        ----------
        where : Where
            The stage; its golden key (``pass0/rigid/iter02/mean_shifts``) is
            ``clnfdiag.keys.key_of(where)``, relative to the hook's prefix.
        value : array or scalar
        dtype : numpy dtype, optional
            The golden's dtype for the key.

        Returns
        -------
        The value the loop goes on with (``value`` itself unless the hook feeds
        another one).
        """
        return value

    def discard(self, where: Where) -> None:
        """Forget a stage value seen earlier (the shape of an iteration that then stops)."""

    def scoped(self, prefix: str) -> "StageHook":
        """The hook for a sub-fit whose keys go under ``prefix`` (part models)."""
        return self


@runtime_checkable
class StageOps(Protocol):
    """The operations of one CLNF pass (OpenFace's ``CLNF::Fit`` and ``CLNF::NU_RLMS``).

    Attributes
    ----------
    n_points : int
    patch_scales : list[float]
        Patch scale of each expert scale (0.25, 0.35, 0.5 for the main model).
    """

    n_points: int
    patch_scales: list[float]

    # -- per pass: set-up ------------------------------------------------
    def view(self, params_global: np.ndarray, scale: int) -> int:
        """``view_id``: the expert view closest to the current rotation."""

    def visibilities(self, scale: int, view: int) -> np.ndarray:
        """``visibilities``: (n,) bool, landmarks with an expert in the view."""

    def shape_2d(self, params_local: np.ndarray, params_global: np.ndarray) -> np.ndarray:
        """``landmarks_at_response`` (and any shape): (n, 2) float32 image landmarks."""

    def reference_shape(self, params_local: np.ndarray, scale: int) -> np.ndarray:
        """``reference_shape``: (n, 2) at the scale's patch scaling, no rotation or translation."""

    def similarity(self, landmarks: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sim_img_to_ref, sim_ref_to_img)``: (2, 2) float32 each."""

    # -- per pass: responses ---------------------------------------------
    def area_of_interest(self, gray_f32: np.ndarray, landmarks: np.ndarray, sim_ref_to_img: np.ndarray,
                         scale: int, view: int, window: int) -> np.ndarray:
        """``area_of_interest``: (n, A, A) float32, ``A = window + support - 1``."""

    def response_raw(self, areas: np.ndarray, scale: int, view: int) -> np.ndarray:
        """``response_raw``: (n, w, w) float32, the neurons' sum."""

    def response_sigma(self, raw: np.ndarray, scale: int, view: int) -> np.ndarray:
        """``response_sigma``: (n, w, w) float32, ``Sigma @ vec(raw)``."""

    def response(self, sigma_maps: np.ndarray, scale: int, view: int) -> np.ndarray:
        """``response``: (n, w, w) float32, the maps NU-RLMS uses."""

    # -- NU-RLMS -----------------------------------------------------------
    def weights(self, scale: int, view: int, weight_factor: float) -> np.ndarray:
        """``weights``: (2n,) float32 diagonal of the weight matrix."""

    def shape_and_jacobian(self, params_local: np.ndarray, params_global: np.ndarray,
                           rigid: bool) -> tuple[np.ndarray, np.ndarray]:
        """``shape`` (n, 2) and the Jacobian (2n, 6) or (2n, 6 + m), float32."""

    def shape_change_norm(self, shape: np.ndarray, previous: np.ndarray) -> float:
        """``shape_change_norm``: how far the shape moved since the last iteration (px)."""

    def window_offsets(self, shape: np.ndarray, base_shape: np.ndarray, sim_img_to_ref: np.ndarray,
                       window: int) -> tuple[np.ndarray, np.ndarray]:
        """``(dxs, dys)``: (n,) float32 positions inside the response windows."""

    def mean_shifts_ref(self, responses: np.ndarray, dxs: np.ndarray, dys: np.ndarray,
                        visible: np.ndarray, sigma: float) -> np.ndarray:
        """``mean_shifts_ref``: (n, 2) float32 KDE mean-shifts, reference frame."""

    def mean_shifts(self, mean_shifts_ref: np.ndarray, sim_ref_to_img: np.ndarray,
                    visible: np.ndarray) -> np.ndarray:
        """``mean_shifts``: (n, 2) float32, image frame, invisible landmarks zeroed."""

    def visible_jacobian(self, jacobian: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """``jacobian``: the Jacobian with the rows of invisible landmarks zeroed."""

    def update_solver(self, weights: np.ndarray, visible: np.ndarray, reg_factor: float,
                      rigid: bool) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """A function ``(jacobian, mean_shifts, params_local) -> param_update`` for one phase."""

    def update_parameters(self, param_update: np.ndarray, params_local: np.ndarray,
                          params_global: np.ndarray, limit_pose: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(params_local, params_global)`` after the update and the clamp."""

    # -- after the last pass ---------------------------------------------------
    def landmark_likelihoods(self, responses: np.ndarray, dxs: np.ndarray, dys: np.ndarray,
                             visible: np.ndarray, sigma: float) -> np.ndarray:
        """``landmark_likelihoods``: (n,) float32."""

    def model_likelihood(self, landmark_likelihoods: np.ndarray, visible: np.ndarray) -> float:
        """``likelihood``: the model log-likelihood."""


__all__ = ["StageOps", "StageHook", "Where"]
