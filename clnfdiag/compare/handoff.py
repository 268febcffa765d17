"""What a comparison's process hands back: its brief, its human line, its JSON text.

A :class:`~clnfdiag.compare.struct.CaseComparison` holds every stage's result (about
500 per trace, a few hundred kB once pickled). A worker of a parallel run used to
send it whole to the main process, which unpickled it only to print one line, keep a
:class:`Brief` for the summary and dump its JSON: on two cores that main process
competed with the workers for about a sixth of the CPU. :func:`hand_off` does those
three things where the comparison was made, and a :class:`Handoff` carries back just
their results (the comparison whole only when the report, whose tables span every
case, needs it). The bytes printed and written are those the main process made
before: :func:`case_line` and :func:`~clnfdiag.compare.jsonstream.case_text` are
pure functions of the comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

from .comparator import FINAL_LANDMARKS
from .jsonstream import case_text
from .struct import CaseComparison, CaseFailure, fmt_number


@dataclass(frozen=True)
class StageBrief:
    """What the run's summary keeps of a comparison's worst stage (see :class:`Brief`)."""

    stage: str
    max_abs: float
    max_rel: float
    ratio: float
    within_tolerance: bool


@dataclass(frozen=True)
class Brief:
    """What :meth:`Summary.from_results <clnfdiag.compare.struct.Summary.from_results>` reads
    of a comparison -- its case, mode, verdict, first divergent stage and worst stage -- in a
    few hundred bytes instead of the comparison's every stage: a run keeps one per
    comparison for its summary line and JSON summary, and drops the comparison itself."""

    case: str
    mode: str
    passed: bool
    first_divergent_stage: str | None
    worst_stage: StageBrief | None


def brief(res: CaseComparison | CaseFailure) -> Brief | CaseFailure:
    """The :class:`Brief` of a comparison; a failure (a few fields already) as it is."""
    if isinstance(res, CaseFailure):
        return res
    w = res.worst_stage
    worst = None if w is None else StageBrief(w.stage, w.max_abs, w.max_rel, w.ratio, w.within_tolerance)
    return Brief(res.case, res.mode, res.passed, res.first_divergent_stage, worst)


def case_line(cmp: CaseComparison) -> str:
    """One human line for a comparison: verdict, first divergence with its landmarks, its
    replayed impact, the causes to fix first, and (propagated mode) the end-to-end error.

    In isolated mode each stage is fed the golden's inputs, so the trace's own final
    landmarks say nothing about the landmarks: only a replayed impact does.
    """
    head = f"{cmp.verdict.upper():<8}  {cmp.case}  {cmp.mode}"
    parts: list[str] = []
    if cmp.first_divergent_stage is None:
        if cmp.outcome == "identical":
            parts.append(f"{len(cmp.stages)} stages bit-identical")
        else:
            parts.append(f"{len(cmp.stages)} stages within rounding noise")
            w = cmp.worst_stage
            if w is not None:
                parts.append(f"worst {w.stage} at {fmt_number(w.ratio)}x tolerance (max_abs {fmt_number(w.max_abs)})")
    else:
        s = cmp.stage(cmp.first_divergent_stage)
        at = s.max_abs_landmark
        text = (f"first divergence {s.stage}: max_abs {fmt_number(s.max_abs)}"
                + (f" at landmark {at}" if at is not None else "")
                + f" max_rel {fmt_number(s.max_rel)} ({fmt_number(s.ratio)}x tolerance)")
        if s.note:
            text += f" [{s.note}]"
        if s.worst_landmarks:
            more = "..." if s.n_beyond > len(s.worst_landmarks) else ""
            text += f", {s.n_beyond} beyond, worst first: landmarks {','.join(map(str, s.worst_landmarks))}{more}"
        parts.append(text)
        parts.append(f"{len(cmp.divergent_stages)}/{len(cmp.stages)} stages beyond")
        if cmp.impact is not None:
            reach = {True: "beyond", False: "within", None: "?"}[s.reaches_landmarks]
            parts.append(f"impact: landmarks {fmt_number(cmp.impact.get('landmarks_max_px'))} px ({reach} "
                         f"the case's noise {fmt_number(cmp.impact.get('noise_floor_px'))} px)")
        elif cmp.mode == "isolated":
            parts.append("landmark impact not replayed")
        if cmp.causes:
            top = "; ".join(c.line() for c in cmp.causes[:3])
            parts.append(f"fix these first: {top}")
    final = cmp.observed.get("landmarks_max_px")
    if final is not None and cmp.mode == "propagated":
        noise = (f", noise {fmt_number(cmp.noise_floor_px)} px from {cmp.noise_floor_source}"
                 if cmp.noise_floor_px is not None else "")
        parts.append(f"{FINAL_LANDMARKS} {fmt_number(final)} px (tol {fmt_number(cmp.landmark_tolerance_px)}{noise})")
    if cmp.missing_keys:
        parts.append(f"{len(cmp.missing_keys)} golden stages not in candidate")
    return head + "  " + "; ".join(parts)


@dataclass(frozen=True)
class Handoff:
    """One comparison (or failure) as :func:`hand_off` returns it to the run's caller.

    Attributes
    ----------
    brief : Brief or CaseFailure
        What the summary reads.
    line : str or None
        The human line (stderr for a failure, stdout otherwise); None when
        nothing is printed for it (``--quiet`` and passed).
    json_text : str or None
        :func:`~clnfdiag.compare.jsonstream.case_text` of the comparison, when the
        run writes JSON (None for a failure: the document lists failures from
        their briefs).
    result : CaseComparison or CaseFailure or None
        The whole result, only when asked for (the report).
    """

    brief: Brief | CaseFailure
    line: str | None
    json_text: str | None = None
    result: CaseComparison | CaseFailure | None = None

    @property
    def failed(self) -> bool:
        """The case or mode could not be compared (its line is an error line)."""
        return isinstance(self.brief, CaseFailure)


def hand_off(res: CaseComparison | CaseFailure, quiet: bool = False, json: bool = False,
             whole: bool = False) -> Handoff:
    """The :class:`Handoff` of a result: its brief, its line (none for a passing comparison
    when ``quiet``), its JSON text when ``json``, and itself when ``whole``.

    Raises ValueError (from the JSON text) for a non-finite float the comparison's
    ``to_json`` let through, as the writer would.
    """
    if isinstance(res, CaseFailure):
        return Handoff(res, res.line(), None, res if whole else None)
    line = None if quiet and res.passed else case_line(res)
    text = case_text(res.to_json()) if json else None
    return Handoff(brief(res), line, text, res if whole else None)


__all__ = ["Brief", "StageBrief", "Handoff", "brief", "case_line", "hand_off"]
