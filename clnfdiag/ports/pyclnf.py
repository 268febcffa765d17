"""pyclnf 0.4.1's CCNF path as a port adapter: ``clnfdiag compare GOLDEN --port pyclnf``.

pyclnf (pure-Python CLNF) fits with CEN experts by default, whose weights it
downloads; this adapter never uses them and never downloads anything. It runs
pyclnf's *CCNF* code path (:class:`pyclnf.CCNFModel`, the CCNF branch of
``pyclnf.core.optimizer.NURLMSOptimizer``, :class:`pyclnf.core.pdm.PDM`,
``pyclnf.core.utils``) stage by stage inside clnfdiag's fit loop, deviations
included: nothing of pyclnf is fixed here. pyclnf is imported when the adapter
is built (clnfdiag imports without it).

Model files
-----------
pyclnf loads NumPy exports, not OpenFace's files. The adapter makes them from
the OpenFace files clnfdiag found (never copied into the repository) with
pyclnf's own exporters: ``CCNFPatchExpertLoader(...).save_numpy`` for each
``ccnf_patches_<scale>_general.txt`` (``exported_ccnf_<scale>/``), and
``pyclnf.models._derive.export_sigma_components`` (from the 0.25 file, as
pyclnf does) and ``export_face_pdm``. The result is cached under
``$XDG_CACHE_HOME/clnfdiag/pyclnf/<key>/`` (default ``~/.cache``), ``key`` the
SHA-256 of the source files' contents and of the converter (pyclnf version,
:data:`CONVERSION_VERSION`); it is built in a temporary folder next to it and
renamed into place, so it is complete or absent, and a second run loads it
without converting. An unwritable cache is replaced by a temporary folder
(converted again each time, with a warning).

Stages pyclnf produces, and the pyclnf code each one calls
-----------------------------------------------------------
``ps`` is the pass's patch scale (``patch_scales[scale]``), ``opt`` the
adapter's ``NURLMSOptimizer`` (built once, ``use_gpu=False``, its other
arguments at their defaults), ``pdm`` pyclnf's PDM, ``ccnf`` its CCNFModel.

=====================  ===========================================================================
method (stage kinds)   pyclnf
=====================  ===========================================================================
view (view_id)         ``CLNF.fit``: ``view_idx = 0`` whatever the pose (it never selects a view)
visibilities           landmarks with an expert in ``ccnf.scale_models[ps]['views'][view]['patches']``
shape_2d               ``pdm.params_to_landmarks_2d([g, loc])``
reference_shape        ``pdm.get_reference_shape(ps, np.zeros(n_modes))``, as ``optimize`` calls it:
                       the mean shape, not the current local parameters (deviation R)
similarity             ``utils.align_shapes_with_scale(landmarks, reference)`` and
                       ``utils.invert_similarity_transform`` (float64)
area_of_interest       ``opt._extract_aoi`` (``utils.extract_aoi``: ``cv2.warpAffine``) of the float32
                       image, side ``window + max(width, height) - 1`` as ``_compute_response_map``;
                       the warp's translation is formed in float64, then rounded (OpenFace: float)
response_raw           ``_compute_response_map``'s CCNF loop: ``opt._extract_patch`` at each window
                       position, ``CCNFPatchExpert.compute_response`` (float32 correlation of the
                       patch / 255, ``2 alpha sigmoid``, neurons with ``|alpha| < 1e-4`` skipped)
response_sigma         ``CCNFPatchExpert.compute_sigma(ccnf.sigma_components[w], w)`` then
                       ``Sigma @ vec(raw)``; a window without sigma components (13, the wild
                       preset's second pass) keeps the raw map where OpenFace scales it by
                       ``(2 sum alpha)^-1`` (deviation S: a positive factor per map, which the
                       mean-shift does not see)
response               ``_compute_response_map``'s shift: minus the minimum when it is negative
weights                ``CLNF.fit``'s ``np.ones(n)`` per landmark (:meth:`PyclnfOps._landmark_weights`),
                       then ``optimize``'s ``weight_factor * diag`` (identity when the factor is 0):
                       uniform NU-RLMS weights, the experts' confidences unused (deviation W)
shape_and_jacobian     ``pdm.params_to_landmarks_2d`` and ``pdm.compute_jacobian_rigid`` /
                       ``pdm.compute_jacobian``
shape_change_norm      ``optimize``'s ``np.linalg.norm((current - previous).flatten())``
window_offsets         ``_compute_mean_shift``'s offsets: ``(shape - base)`` rotated by
                       ``sim_img_to_ref``, plus ``(w - 1) / 2``
mean_shifts_ref        ``_compute_mean_shift``'s dispatch: by default (``use_direct_kde`` and not
                       ``debug_mode``) ``opt._compute_mean_shift_vectorized`` on the float32-stacked
                       maps at the float32 offsets clipped to ``[0, w - 0.1]``: the *exact* Gaussian
                       kernel at the offset, not OpenFace's 0.1-px table (deviation K); otherwise
                       ``opt._kde_mean_shift`` per landmark (pyclnf's own 0.1-px grid when
                       ``use_direct_kde`` is False)
mean_shifts            ``_compute_mean_shift``'s rotation back by ``sim_ref_to_img``
visible_jacobian       unchanged: pyclnf does not zero invisible landmarks' Jacobian rows (their
                       mean-shift is 0 and their weight is not; no effect in view 0, where every
                       landmark is visible)
update_solver          ``opt._solve_rigid_update(J, v, W)``; non-rigid ``opt._solve_update(J, v, W,
                       opt._compute_lambda_inv(pdm, 6 + m), params)`` with the pass's
                       ``reg_factor`` as ``opt._current_regularization`` (float64 Cholesky)
update_parameters      ``pdm.update_params`` then ``pdm.clamp_params`` (rotations to ±pi, shape to
                       ±3 sqrt(eigenvalue)); ``limit_pose`` is not a pyclnf option
=====================  ===========================================================================

Not produced (computed by clnfdiag so the loop goes on, and dropped from the
port's trace): ``landmark_likelihoods`` and ``likelihood``. pyclnf's CCNF fit
computes no likelihood: ``CLNF.fit`` returns none, and its only model score,
``CLNF._compute_model_likelihood`` (hypothesis ranking in
``fit_multi_hypothesis``), takes the maps at their centre rather than at the
landmark's offset, returns one averaged number (no per-landmark values) and is
given no maps by the CPU path (``optimizer.cached_response_maps`` stays None),
so it falls back to a bounds/shape heuristic. pyclnf has no per-part
(hierarchical) CCNF fit of the main model's loop either: its eye/inner
refinement (``HierarchicalEyeModel``, ``HierarchicalInnerModel``) is another
model, outside the stage protocol; on hierarchical goldens the part models are
clnfdiag's.

What is clnfdiag's, not pyclnf's (outside the stage protocol)
------------------------------------------------------------
The loop itself: passes, iteration counts, the 0.01 stop, per-scale
``reg``/``sigma``/``weight`` (the golden manifest's values, adapted as
OpenFace), the initial parameters from the box. pyclnf's own driver
(``CLNF.fit``) differs there: rigid 10 / non-rigid 5 iterations with the stop
tested from the third, ``reg=22.5, sigma=2.5, weight=0`` by default, windows
``[11, 9, 7, 5]`` with a fourth pass at a scale its CCNF model does not have,
and ``_map_windows_to_scales`` = ``{11: 0, 9: 1, 7: 2, 5: 3}``, so the wild
windows (15, 13) raise ``KeyError: 15`` there. This adapter takes the scale
from the loop and calls the optimizer's functions with the loop's window, which
is what ``NURLMSOptimizer.optimize(window_size=15, patch_scaling=ps)`` does.

Precision
---------
pyclnf's dtypes are kept inside each stage (float64 PDM, similarity, maps,
Sigma product and solver; float32 correlation, warp and default KDE); results
leave each method as the protocol's float32. Where pyclnf hands a float64
value from one step to the next (parameters, landmarks, transforms, maps,
offsets, Jacobian, update), the adapter goes on with its own float64 value when
the float32 it is given is that value rounded (:class:`_Carry`, reset at each
fit's first pass); any other input (a golden's, in isolated mode) is used as
given.

Deviations, and what they do to the goldens
-------------------------------------------
Measured on the 10 shared goldens: W (uniform weights) dominates the wild
preset (weight factor 2.5; patched alone, ``takeo_wild`` goes from 0.58 to
0.02 px mean, ``multi4_wild`` from 2.5 to 0.05 px); K (exact-kernel KDE) and R
(mean-shape reference) make the default preset's difference (both patched,
``astronaut_default`` goes from 0.016 px mean to 3e-5 px, inside the C++ builds'
own spread). With K, R and W patched, every stage of isolated mode agrees with
the golden to rounding except S and a few area-of-interest pixels (the warp's
translation rounded differently lands warpAffine's 1/32-px sampling elsewhere:
up to 1.5 grey levels; on ``takeo_wild`` that alone moves the landmarks 0.02
px), and 7 of the 10 cases land within their C++ floor (``CPP_FLOOR.json``);
``einstein_default``, ``multi0_default`` and ``takeo_wild`` stay 0.003-0.26 px
off (max): rounding, amplified by those fits (isolated mode shows them turning
1e-5 px mean-shift differences into 0.16-0.43 px). S, the view and the kept
Jacobian rows change no landmark on these goldens (all are frontal: view 0,
every landmark visible).

Fixing a deviation in a test
----------------------------
Every pyclnf function is looked up on pyclnf's modules or objects at call time,
so a test can patch pyclnf and see the error fall: ``ops.optimizer.use_direct_kde
= False`` (pyclnf's 0.1-px grid, deviation K) or
``monkeypatch.setattr(pyclnf.core.optimizer.NURLMSOptimizer,
"_compute_mean_shift_vectorized", ...)``; ``PyclnfOps._landmark_weights``
(W: return the experts' confidences); ``PyclnfOps._reference_local`` (R: return
``params_local``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ClnfdiagWarning, InputError
from ..models import CLNFModel
from ..models.locate import sha256_file
from . import PortOps

F32 = np.float32
F64 = np.float64

#: The pyclnf release this adapter reproduces (its private functions are called).
PYCLNF_VERSION = "0.4.1"
#: Bump when the converted folder's layout or content changes.
CONVERSION_VERSION = "1"
#: Written last into a converted folder.
STAMP = "clnfdiag-pyclnf.json"

#: Stage methods the adapter computes with pyclnf (see the module docstring).
PRODUCED_METHODS = ("view", "visibilities", "shape_2d", "reference_shape", "similarity",
                    "area_of_interest", "response_raw", "response_sigma", "response", "weights",
                    "shape_and_jacobian", "shape_change_norm", "window_offsets", "mean_shifts_ref",
                    "mean_shifts", "update_solver", "update_parameters")
#: Stage methods pyclnf has no computation for, and why.
NOT_PRODUCED = {
    "landmark_likelihoods": "pyclnf's CCNF fit computes no per-landmark likelihood",
    "model_likelihood": "pyclnf's CCNF fit computes no model likelihood",
}


def _import_pyclnf():
    """pyclnf's modules (a one-line InputError when pyclnf is not installed)."""
    try:
        import pyclnf
        import pyclnf.core.optimizer
        import pyclnf.core.patch_expert
        import pyclnf.core.pdm
        import pyclnf.core.utils
        import pyclnf.models._derive
        import pyclnf.models.openface_loader
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] == "pyclnf":
            raise InputError("pyclnf is not installed: pip install 'clnfdiag[pyclnf]'") from None
        raise InputError(f"pyclnf cannot be imported ({type(exc).__name__}: {exc})") from None
    return pyclnf


# ------------------------------------------------------------------ converted model files
def cache_root() -> Path:
    """``$XDG_CACHE_HOME/clnfdiag/pyclnf`` (default ``~/.cache/clnfdiag/pyclnf``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "clnfdiag" / "pyclnf"


def _sources(clnf: CLNFModel) -> dict[str, Path]:
    """The OpenFace files pyclnf's exporters read: the PDM and each scale's CCNF experts."""
    out = {"pdm": Path(clnf.pdm.path)}
    for s in clnf.scales:
        out[f"ccnf_{s.patch_scaling}"] = Path(s.path)
    return out


def conversion_key(clnf: CLNFModel, pyclnf_version: str = PYCLNF_VERSION) -> str:
    """SHA-256 of the source files' contents and of the converter."""
    h = hashlib.sha256(f"pyclnf {pyclnf_version}|conversion {CONVERSION_VERSION}".encode())
    for name, path in sorted(_sources(clnf).items()):
        h.update(f"|{name}:{sha256_file(path)}".encode())
    return h.hexdigest()


def convert_openface_models(clnf: CLNFModel, out_dir: Path) -> None:
    """Write pyclnf's NumPy model folder from OpenFace's files, with pyclnf's own exporters.

    ``exported_ccnf_<scale>/`` (``CCNFPatchExpertLoader.save_numpy``), ``sigma_components/``
    (``_derive.export_sigma_components`` of the first scale's file, pyclnf's
    ``ccnf_patches_0.25_general.txt``) and ``exported_pdm/`` (``_derive.export_face_pdm``).
    """
    pyclnf = _import_pyclnf()
    loader = pyclnf.models.openface_loader.CCNFPatchExpertLoader
    derive = pyclnf.models._derive
    for s in clnf.scales:
        ccnf = loader(str(s.path), num_landmarks=clnf.pdm.n_points, verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):
            ccnf.save_numpy(str(out_dir / f"exported_ccnf_{s.patch_scaling}"))
    derive.export_sigma_components(Path(clnf.scales[0].path), out_dir / "sigma_components")
    derive.export_face_pdm(Path(clnf.pdm.path), out_dir / "exported_pdm")


def converted_model_dir(clnf: CLNFModel) -> Path:
    """pyclnf's model folder for ``clnf``'s files: from the cache, or converted into it once.

    The folder is built under a temporary name next to its final place and
    renamed there whole (a concurrent run that finished first wins; ours is
    dropped). Raises OSError when the cache cannot be written.
    """
    pyclnf = _import_pyclnf()
    key = conversion_key(clnf, getattr(pyclnf, "__version__", "?"))
    final = cache_root() / key[:32]
    if (final / STAMP).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        convert_openface_models(clnf, tmp)
        stamp = {"key": key, "pyclnf": getattr(pyclnf, "__version__", "?"),
                 "conversion": CONVERSION_VERSION,
                 "sources": {n: str(p) for n, p in sorted(_sources(clnf).items())}}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        if final.exists() and not (final / STAMP).is_file():
            shutil.rmtree(final, ignore_errors=True)     # an unfinished folder from elsewhere
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / STAMP).is_file():             # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------ float64 continuity
class _Carry:
    """pyclnf's float64 values between stages, found again from their float32 rounding.

    The protocol hands float32 arrays from stage to stage; pyclnf keeps some
    values in float64 from one step to the next. :meth:`out` returns the
    float32 rounding and remembers the value; :meth:`back` returns the
    remembered value when handed exactly that rounding, else the given array
    in ``dtype`` (an input that is not ours: a golden's).
    """

    def __init__(self, size: int = 32):
        self.size = size
        self._seen: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def _key(kind: str, arr32: np.ndarray) -> tuple:
        a = np.ascontiguousarray(arr32, dtype=F32)
        return kind, a.shape, a.tobytes()

    def clear(self) -> None:
        self._seen.clear()

    def out(self, kind: str, value: np.ndarray) -> np.ndarray:
        """The float32 rounding of ``value``, remembered."""
        return self.out_as(kind, value, value)

    def out_as(self, kind: str, value: np.ndarray, travels: np.ndarray) -> np.ndarray:
        """Remember ``value`` under the float32 rounding of ``travels`` (a part of it), returned."""
        v32 = np.asarray(travels, dtype=F32)
        key = self._key(kind, v32)
        self._seen[key] = value
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return v32

    def back(self, kind: str, arr32: np.ndarray, dtype=F64) -> np.ndarray:
        hit = self._seen.get(self._key(kind, arr32))
        return hit if hit is not None else np.asarray(arr32, dtype=dtype)


def _stack_xy(a: np.ndarray) -> np.ndarray:
    """(n, 2) -> pyclnf's stacked (2n,) ``[x0..xn-1, y0..yn-1]`` (dtype kept)."""
    return np.concatenate([a[:, 0], a[:, 1]])


def _unstack_xy(v: np.ndarray) -> np.ndarray:
    n = v.shape[0] // 2
    return np.stack([v[:n], v[n:]], axis=1)


def _as_2x3(sim: np.ndarray) -> np.ndarray:
    """A (2, 2) similarity as the (2, 3) matrix pyclnf's functions take (only the 2x2 part is read)."""
    sim = np.asarray(sim, dtype=F64)
    if sim.shape == (2, 3):
        return sim
    return np.hstack([sim, np.zeros((2, 1), F64)])


# ------------------------------------------------------------------ the adapter
class PyclnfOps(PortOps):
    """pyclnf 0.4.1's CCNF path in clnfdiag's fit loop (see the module docstring).

    Parameters
    ----------
    clnf : CLNFModel
        clnfdiag's main model: its files are converted for pyclnf (cached); its
        PDM (``self.pdm``, clnfdiag's) only starts the fit from the box and
        serves the hierarchical refit, outside the protocol.

    Attributes
    ----------
    ccnf : pyclnf.CCNFModel
    pyclnf_pdm : pyclnf.core.pdm.PDM
    optimizer : pyclnf.core.optimizer.NURLMSOptimizer
    model_dir : Path
        The converted folder the three were loaded from (a temporary one, removed once
        loaded, when the cache cannot be written).
    """

    producer = f"pyclnf {PYCLNF_VERSION}"

    def __init__(self, clnf: CLNFModel):
        super().__init__(clnf)
        pyclnf = _import_pyclnf()
        self._pyclnf = pyclnf
        version = getattr(pyclnf, "__version__", "?")
        if version != PYCLNF_VERSION:
            warnings.warn(f"pyclnf {version} is installed; this adapter reproduces pyclnf "
                          f"{PYCLNF_VERSION} (pip install 'clnfdiag[pyclnf]')", ClnfdiagWarning,
                          stacklevel=2)
            self.producer = f"pyclnf {version}"
        with contextlib.ExitStack() as stack:
            try:
                self.model_dir = converted_model_dir(clnf)
            except OSError as err:
                warnings.warn(f"{cache_root()}: cannot cache pyclnf's converted model files "
                              f"({err.strerror or err}); converting into a temporary folder",
                              ClnfdiagWarning, stacklevel=2)
                self.model_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                convert_openface_models(clnf, self.model_dir)
            # CCNFModel prints its progress on stdout (where `compare --json -` writes).
            with contextlib.redirect_stdout(io.StringIO()):
                self.ccnf = pyclnf.core.patch_expert.CCNFModel(
                    str(self.model_dir), scales=[float(s) for s in self.patch_scales])
                self.pyclnf_pdm = pyclnf.core.pdm.PDM(str(self.model_dir / "exported_pdm"))
        missing = [s for s in self.patch_scales if float(s) not in self.ccnf.scale_models]
        if missing:
            raise InputError(f"pyclnf's CCNF model has no experts for patch scales {missing}",
                             self.model_dir)
        self.optimizer = pyclnf.core.optimizer.NURLMSOptimizer(use_gpu=False)
        self.n_modes = int(self.pyclnf_pdm.n_modes)
        self._carry = _Carry()
        self._last_scale: int | None = None
        self._params: np.ndarray | None = None     # pyclnf's full params at the last shape

    # -- pyclnf objects -----------------------------------------------------------------
    @property
    def _utils(self):
        return self._pyclnf.core.utils

    def _experts(self, scale: int, view: int) -> dict:
        """``CLNF._get_patch_experts``: ``{landmark: CCNFPatchExpert}`` of the view at the scale."""
        scale_model = self.ccnf.scale_models.get(float(self.patch_scales[scale]))
        if scale_model is None:
            return {}
        view_data = scale_model["views"].get(int(view))
        return {} if view_data is None else view_data["patches"]

    @staticmethod
    def _patch_dim(expert) -> int:
        """``_compute_response_map``: CEN's support or CCNF's patch size."""
        if hasattr(expert, "width_support"):
            return max(expert.width_support, expert.height_support)
        return max(expert.width, expert.height)

    def _fast_kde(self) -> bool:
        """``_compute_mean_shift``'s fast path (vectorised exact kernel) is taken."""
        return not self.optimizer.debug_mode and self.optimizer.use_direct_kde

    def _params64(self, params_local, params_global) -> np.ndarray:
        g = np.asarray(params_global, F32)
        loc = np.asarray(params_local, F32)
        return self._carry.back("params", np.concatenate([g, loc]))

    def _params_out(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p32 = self._carry.out("params", np.asarray(params, F64))
        return p32[6:].copy(), p32[:6].copy()

    def _local64(self, params_local) -> np.ndarray:
        """pyclnf's float64 local parameters for their float32 rounding (the last full vector)."""
        loc32 = np.asarray(params_local, F32)
        if self._params is not None and np.array_equal(np.asarray(self._params[6:], F32), loc32):
            return np.array(self._params[6:], F64)
        return loc32.astype(F64)

    # -- deviation points (patch these to fix pyclnf in a test) --------------------------
    def _landmark_weights(self, scale: int, view: int) -> np.ndarray:
        """Per-landmark NU-RLMS weights: ``CLNF.fit``'s ``np.ones(n)`` (deviation W)."""
        return np.ones(self.pyclnf_pdm.n_points)

    def _reference_local(self, params_local: np.ndarray) -> np.ndarray:
        """Local parameters of the reference shape: ``optimize``'s zeros (deviation R)."""
        return np.zeros(self.pyclnf_pdm.n_modes)

    # -- per pass: set-up ----------------------------------------------------------------
    def view(self, params_global, scale: int) -> int:
        # Passes of one fit run at increasing scales: a scale not above the last one starts
        # another fit, whose values owe nothing to the previous fit's.
        if self._last_scale is None or scale <= self._last_scale:
            self._carry.clear()
            self._params = None
        self._last_scale = scale
        return 0                                   # CLNF.fit: view_idx = 0

    def visibilities(self, scale: int, view: int) -> np.ndarray:
        vis = np.zeros(self.n_points, dtype=bool)
        idx = [i for i in self._experts(scale, view) if i < self.n_points]
        vis[idx] = True
        return vis

    def shape_2d(self, params_local, params_global) -> np.ndarray:
        params = self._params64(params_local, params_global)
        self._params = params
        return self._carry.out("landmarks", self.pyclnf_pdm.params_to_landmarks_2d(params))

    def reference_shape(self, params_local, scale: int) -> np.ndarray:
        local = self._reference_local(self._local64(params_local))
        ref = self.pyclnf_pdm.get_reference_shape(float(self.patch_scales[scale]), local)
        return self._carry.out("reference", ref)

    def similarity(self, landmarks, reference):
        lm = self._carry.back("landmarks", landmarks)
        ref = self._carry.back("reference", reference)
        i2r = self._utils.align_shapes_with_scale(lm, ref)
        r2i = self._utils.invert_similarity_transform(i2r)
        # The (2, 2) parts travel; pyclnf's (2, 3) float64 matrices are remembered.
        return (self._carry.out_as("sim_img_to_ref", i2r, i2r[:, :2]),
                self._carry.out_as("sim_ref_to_img", r2i, r2i[:, :2]))

    def _sim(self, kind: str, sim32) -> np.ndarray:
        """pyclnf's (2, 3) float64 similarity for a (2, 2) float32 one (only 2x2 parts are read)."""
        return _as_2x3(self._carry.back(kind, sim32))

    # -- per pass: responses ---------------------------------------------------------------
    def area_of_interest(self, gray_f32, landmarks, sim_ref_to_img, scale: int, view: int,
                         window: int) -> np.ndarray:
        # _precompute_response_maps: the image as float32; _compute_response_map: the area.
        image = np.asarray(gray_f32).astype(F32, copy=False)
        lm = self._carry.back("landmarks", landmarks)
        sim = self._sim("sim_ref_to_img", sim_ref_to_img)
        experts = self._experts(scale, view)
        sides = {window + self._patch_dim(e) - 1 for e in experts.values()}
        if len(sides) > 1:
            raise InputError(f"pyclnf's experts of scale {scale}, view {view} differ in size: "
                             f"{sorted(sides)}", self.model_dir)
        side = sides.pop() if sides else window
        out = np.zeros((self.n_points, side, side), F32)
        for i, e in experts.items():
            out[i] = self.optimizer._extract_aoi(image, lm[i, 0], lm[i, 1], sim, side)
        return out

    def response_raw(self, areas, scale: int, view: int) -> np.ndarray:
        areas = np.asarray(areas)
        experts = self._experts(scale, view)
        side = areas.shape[-1]
        window = None
        maps: dict[int, np.ndarray] = {}
        for i, e in experts.items():
            window = side - self._patch_dim(e) + 1
            # _compute_response_map, CCNF warping branch: one compute_response per position.
            resp = np.zeros((window, window))
            centre = int((side - 1) / 2)
            start = centre - window // 2
            area = areas[i]
            for r in range(window):
                for c in range(window):
                    patch = self.optimizer._extract_patch(area, start + c, start + r,
                                                          e.width, e.height)
                    resp[r, c] = e.compute_response(patch)
            maps[i] = resp
        return self._maps_out("raw", maps, window or side)

    def _maps_out(self, kind: str, maps: dict[int, np.ndarray], window: int) -> np.ndarray:
        full = np.zeros((self.n_points, window, window), F64)
        for i, m in maps.items():
            full[i] = m
        return self._carry.out(kind, full)

    def _maps_in(self, kind: str, maps32, scale: int, view: int) -> dict[int, np.ndarray]:
        full = self._carry.back(kind, maps32)
        return {i: np.array(full[i], dtype=F64) for i in self._experts(scale, view)}

    def response_sigma(self, raw, scale: int, view: int) -> np.ndarray:
        maps = self._maps_in("raw", raw, scale, view)
        experts = self._experts(scale, view)
        window = np.asarray(raw).shape[-1]
        comps = self.ccnf.sigma_components
        out = {}
        for i, resp in maps.items():
            # _compute_response_map: Sigma only for a window with sigma components.
            if comps is not None and window in comps:
                try:
                    sigma = experts[i].compute_sigma(comps[window], window_size=window)
                    resp = (sigma @ resp.reshape(-1, 1)).reshape(resp.shape)
                except Exception as exc:  # pyclnf goes on with the untransformed map
                    warnings.warn(f"pyclnf: Sigma transformation failed: {exc}", ClnfdiagWarning,
                                  stacklevel=2)
            out[i] = resp
        return self._maps_out("sigma", out, window)

    def response(self, sigma_maps, scale: int, view: int) -> np.ndarray:
        maps = self._maps_in("sigma", sigma_maps, scale, view)
        out = {}
        for i, resp in maps.items():
            min_val = resp.min()                  # _compute_response_map's normalisation
            if min_val < 0:
                resp = resp - min_val
            out[i] = resp
        return self._maps_out("response", out, np.asarray(sigma_maps).shape[-1])

    # -- NU-RLMS ---------------------------------------------------------------------------
    def weights(self, scale: int, view: int, weight_factor: float) -> np.ndarray:
        w = self._landmark_weights(scale, view)
        n2 = 2 * self.pyclnf_pdm.n_points
        if weight_factor > 0:                     # optimize(): NU-RLMS mode
            W = weight_factor * np.diag(np.concatenate([w, w]))
        else:                                     # optimize(): identity
            W = np.eye(n2)
        return self._carry.out("weights", np.diag(W).copy())

    def shape_and_jacobian(self, params_local, params_global, rigid: bool):
        params = self._params64(params_local, params_global)
        self._params = params
        shape = self.pyclnf_pdm.params_to_landmarks_2d(params)
        if rigid:
            jac = self.pyclnf_pdm.compute_jacobian_rigid(params).copy()   # a reused buffer
        else:
            jac = self.pyclnf_pdm.compute_jacobian(params)
        return self._carry.out("landmarks", shape), self._carry.out("jacobian", jac)

    def shape_change_norm(self, shape, previous) -> float:
        current = self._carry.back("landmarks", shape)
        prev = self._carry.back("landmarks", previous)
        return float(np.linalg.norm((current - prev).flatten()))

    def window_offsets(self, shape, base_shape, sim_img_to_ref, window: int):
        current = self._carry.back("landmarks", shape)
        base = self._carry.back("landmarks", base_shape)
        sim = self._sim("sim_img_to_ref", sim_img_to_ref)
        offsets_img = current - base
        a_sim, b_sim = sim[0, 0], sim[1, 0]
        offsets_ref_x = a_sim * offsets_img[:, 0] + (-b_sim) * offsets_img[:, 1]
        offsets_ref_y = b_sim * offsets_img[:, 0] + a_sim * offsets_img[:, 1]
        center = (window - 1) / 2.0
        return (self._carry.out("dxs", offsets_ref_x + center),
                self._carry.out("dys", offsets_ref_y + center))

    def mean_shifts_ref(self, responses, dxs, dys, visible, sigma: float) -> np.ndarray:
        opt = self.optimizer
        resp = np.asarray(responses)
        n, window = resp.shape[0], resp.shape[-1]
        vis = np.asarray(visible, dtype=bool)
        maps = self._carry.back("response", responses)
        dx = self._carry.back("dxs", dxs)
        dy = self._carry.back("dys", dys)
        opt._current_sigma = sigma               # optimize(): the pass's adapted sigma
        if self._fast_kde():
            stacked = np.zeros((n, window, window), dtype=np.float32)
            stacked[vis] = maps[vis]
            dx_all = np.clip(np.asarray(dx).astype(np.float32), 0, window - 0.1)
            dy_all = np.clip(np.asarray(dy).astype(np.float32), 0, window - 0.1)
            ms = opt._compute_mean_shift_vectorized(stacked, dx_all, dy_all, window, vis.copy())
            return self._carry.out("ms_ref", _unstack_xy(ms))
        # the per-landmark path (_kde_mean_shift: exact kernel, or pyclnf's 0.1-px grid)
        current_sigma = getattr(opt, "_current_sigma", opt.sigma)
        a_kde = -0.5 / (current_sigma * current_sigma)
        out = np.zeros((n, 2))
        for i in np.flatnonzero(vis):
            out[i] = opt._kde_mean_shift(np.asarray(maps[i], F64), float(dx[i]), float(dy[i]),
                                         a_kde, int(i))
        return self._carry.out("ms_ref", out)

    def mean_shifts(self, mean_shifts_ref, sim_ref_to_img, visible) -> np.ndarray:
        ms_ref = self._carry.back("ms_ref", mean_shifts_ref,
                                  dtype=F32 if self._fast_kde() else F64)
        sim = self._sim("sim_ref_to_img", sim_ref_to_img)
        a_mat, b_mat = sim[0, 0], sim[1, 0]
        ms_x = a_mat * ms_ref[:, 0] - b_mat * ms_ref[:, 1]
        ms_y = b_mat * ms_ref[:, 0] + a_mat * ms_ref[:, 1]
        # the fast path stores into a float32 vector, the per-landmark path into a float64 one
        out = np.stack([ms_x, ms_y], axis=1).astype(F32 if self._fast_kde() else F64)
        return self._carry.out("ms", out)

    def visible_jacobian(self, jacobian, visible) -> np.ndarray:
        return jacobian                           # pyclnf keeps every landmark's rows

    def update_solver(self, weights, visible, reg_factor: float, rigid: bool) -> Callable:
        opt = self.optimizer
        W = np.diag(self._carry.back("weights", weights))
        n_params = 6 + self.n_modes
        lambda_inv = None if rigid else opt._compute_lambda_inv(self.pyclnf_pdm, n_params)

        def solve(jacobian, mean_shifts, params_local):
            J = self._carry.back("jacobian", jacobian)
            v = _stack_xy(self._carry.back("ms", mean_shifts,
                                           dtype=F32 if self._fast_kde() else F64))
            if rigid:
                dp = opt._solve_rigid_update(J, v, W)
            else:
                opt._current_regularization = reg_factor
                params = self._params              # set by shape_and_jacobian just before
                if params is None or not np.array_equal(np.asarray(params[6:], F32),
                                                        np.asarray(params_local, F32)):
                    # reg * Lambda_inv * params: Lambda_inv's global part is 0
                    params = np.concatenate([np.zeros(6), self._local64(params_local)])
                dp = opt._solve_update(J, v, W, lambda_inv, params)
            return self._carry.out("param_update", np.asarray(dp, F64))

        return solve

    def update_parameters(self, param_update, params_local, params_global, limit_pose: bool):
        params = self._params64(params_local, params_global)
        dp = self._carry.back("param_update", param_update)
        delta = np.zeros(len(params))             # optimize(): delta_p_full[:6] = ... (rigid)
        delta[:dp.shape[0]] = dp
        params = self.pyclnf_pdm.update_params(params, delta)
        params = self.pyclnf_pdm.clamp_params(params)
        self._params = params
        return self._params_out(params)


__all__ = ["PyclnfOps", "converted_model_dir", "convert_openface_models", "conversion_key",
           "cache_root", "PRODUCED_METHODS", "NOT_PRODUCED", "PYCLNF_VERSION", "CONVERSION_VERSION"]
