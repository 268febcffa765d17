"""clnfdiag's CLNF as a :class:`~clnfdiag.clnf.protocol.StageOps`: OpenFace 2.x, stage by stage.

Each method is one stage of OpenFace's ``CLNF::Fit`` computed with the exact
arithmetic of :mod:`clnfdiag.pdm`, :mod:`clnfdiag.experts`,
:mod:`clnfdiag.optimiser` and :mod:`clnfdiag.similarity` (bit-identical to the
C++ goldens on any CPU). Maps travel as ``(n, w, w)`` with zeros for the
landmarks a view has no expert for; the experts themselves work on the
visible ones only.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import optimiser as opt
from ..experts import (PatchExperts, all_landmarks, extract_areas, raw_response, shift_response,
                       sigma_response)
from ..models import CLNFModel
from ..pdm import PDM
from ..similarity import similarity_transforms
from .phase import run_phase

F32 = np.float32


class OpenFaceOps:
    """The stages of one CLNF model (the main 68-point one or a part), as OpenFace computes them.

    Parameters
    ----------
    clnf : CLNFModel
        The model read from OpenFace's files.

    Attributes
    ----------
    name : str
    pdm : PDM
    experts : PatchExperts
    patch_scales : list[float]
    n_points : int
    """

    def __init__(self, clnf: CLNFModel):
        self.name = clnf.name
        self.pdm = PDM(clnf.pdm)
        self.experts = PatchExperts(clnf.scales)
        self.patch_scales = list(clnf.patch_scales)
        self.n_points = self.pdm.n_points
        # Per-(scale, view) constants of the passes, computed once.
        self._weights: dict = {}
        self._visible: dict = {}
        self._phase_constants: dict = {}

    # -- per pass: set-up ----------------------------------------------------------
    def view(self, params_global, scale: int) -> int:
        return self.experts.view_index(params_global, scale)

    def visibilities(self, scale: int, view: int) -> np.ndarray:
        key = (scale, view)
        vis = self._visible.get(key)
        if vis is None:
            vis = self._visible[key] = self.experts.scales[scale].visibility[view].astype(bool)
            vis.flags.writeable = False                 # shared by every fit
        return vis

    def shape_2d(self, params_local, params_global) -> np.ndarray:
        return self.pdm.calc_shape_2d(params_local, params_global)

    def reference_shape(self, params_local, scale: int) -> np.ndarray:
        ps = self.patch_scales[scale]
        return self.pdm.calc_shape_2d(params_local, np.array([ps, 0, 0, 0, 0, 0], F32))

    def similarity(self, landmarks, reference):
        return similarity_transforms(landmarks, reference)

    # -- per pass: responses ---------------------------------------------------------
    def _visible_maps(self, maps, bank) -> np.ndarray:
        """The bank's landmarks' rows of an ``(n, ...)`` array (itself when the bank has all)."""
        maps = np.asarray(maps)
        if bank.landmarks.shape[0] == self.n_points:    # landmarks are sorted and unique
            return maps
        return maps[bank.landmarks]

    def _all_maps(self, maps, bank) -> np.ndarray:
        """:func:`all_landmarks` (the bank's own fresh array when it has every landmark)."""
        if bank.landmarks.shape[0] == self.n_points:
            return maps
        return all_landmarks(maps, bank.landmarks, self.n_points)

    def area_of_interest(self, gray_f32, landmarks, sim_ref_to_img, scale: int, view: int,
                         window: int, interpolation: str = "linear") -> np.ndarray:
        """Areas of the visible landmarks, warped (``interpolation``: ``linear`` as
        OpenFace, ``nearest`` for the ``nearest-warp`` fault)."""
        bank = self.experts.bank(scale, view)
        side = window + bank.height - 1
        areas = extract_areas(gray_f32, landmarks, sim_ref_to_img, bank.landmarks, side,
                              nearest=interpolation == "nearest")
        return self._all_maps(areas, bank)

    def response_raw(self, areas, scale: int, view: int) -> np.ndarray:
        bank = self.experts.bank(scale, view)
        raw = raw_response(bank, self._visible_maps(areas, bank))
        return self._all_maps(raw, bank)

    def response_sigma(self, raw, scale: int, view: int) -> np.ndarray:
        bank = self.experts.bank(scale, view)
        sig = sigma_response(bank, self._visible_maps(raw, bank))
        return self._all_maps(sig, bank)

    def response(self, sigma_maps, scale: int, view: int) -> np.ndarray:
        bank = self.experts.bank(scale, view)
        resp = shift_response(self._visible_maps(sigma_maps, bank))
        return self._all_maps(resp, bank)

    # -- NU-RLMS ------------------------------------------------------------------------
    def weights(self, scale: int, view: int, weight_factor: float) -> np.ndarray:
        key = (scale, view, float(weight_factor))
        w = self._weights.get(key)
        if w is None:
            bank = self.experts.bank(scale, view)
            conf = np.zeros(self.n_points, np.float64)
            conf[bank.landmarks] = bank.confidence
            w = self._weights[key] = opt.weight_matrix_diag(conf, None, weight_factor)
            w.flags.writeable = False                   # shared by every fit
        return w

    def shape_and_jacobian(self, params_local, params_global, rigid: bool):
        return self.pdm.shape_and_jacobian(params_local, params_global, rigid)

    def shape_change_norm(self, shape, previous) -> float:
        return opt.shape_change_norm(shape, previous)

    def window_offsets(self, shape, base_shape, sim_img_to_ref, window: int):
        return opt.window_offsets(shape, base_shape, sim_img_to_ref, window)

    def mean_shifts_ref(self, responses, dxs, dys, visible, sigma: float) -> np.ndarray:
        return opt.mean_shift(responses, dxs, dys, visible, sigma)

    def mean_shifts(self, mean_shifts_ref, sim_ref_to_img, visible) -> np.ndarray:
        return opt.to_image_frame(mean_shifts_ref, sim_ref_to_img, visible)

    def visible_jacobian(self, jacobian, visible) -> np.ndarray:
        if visible.all():
            return jacobian
        jacobian[~np.concatenate([visible, visible])] = 0
        return jacobian

    def update_solver(self, weights, visible, reg_factor: float, rigid: bool) -> Callable:
        return opt.UpdateSolver(weights, visible, self.pdm.eigen_values, reg_factor, rigid).solve

    def update_parameters(self, param_update, params_local, params_global, limit_pose: bool):
        loc, g = self.pdm.update_parameters(param_update, params_local, params_global)
        return self.pdm.clamp(loc, g, limit_pose)

    def untraced_phase(self, params_global, params_local, rigid: bool, base_shape,
                       sim_img_to_ref, sim_ref_to_img, window: int, visible, responses,
                       sigma: float, weights, reg_factor: float, n_iterations: int, tol: float):
        """A whole NU-RLMS phase in one compiled call (:func:`clnfdiag.clnf.phase.run_phase`),
        for the loop's untraced fits: the stages above in their order, the same bits; None
        when the phase must run stage by stage."""
        return run_phase(self.pdm, params_global, params_local, rigid, base_shape,
                         sim_img_to_ref, sim_ref_to_img, window, visible, responses, sigma,
                         weights, reg_factor, n_iterations, tol, self._phase_constants)

    # -- after the last pass -------------------------------------------------------------
    def landmark_likelihoods(self, responses, dxs, dys, visible, sigma: float) -> np.ndarray:
        return opt.landmark_likelihoods(responses, dxs, dys, visible, sigma)

    def model_likelihood(self, landmark_likelihoods, visible) -> float:
        return float(opt.model_likelihood(landmark_likelihoods, visible))


__all__ = ["OpenFaceOps"]
