"""Contrast physics of the phantom: tissue relaxation parameters, sequences and their signal equations.

Each voxel is a partial-volume mixture of tissues; its signal is the magnitude of the fraction-weighted sum
of the tissues' (signed) signals, as the magnetisations of the compartments add before detection.

Normal tissue at 3 T:
* WM T1 832 ms, T2 80 ms; GM T1 1331 ms, T2 110 ms (Wansapura et al., J Magn Reson Imaging 1999;9:531-538).
* CSF T1 ~4000-4400 ms, T2 ~2000 ms (Lu et al., J Magn Reson Imaging 2005;22:13-22; CSF T2 of 1.5-2 s as in
  Spijkerman et al., MAGMA 2018;31:415-424). T1 4000 ms / T2 2000 ms are used.
* Proton density (water content) relative to CSF: WM 0.69, GM 0.80 (Neeb et al., NeuroImage 2006;31:1156-1168).
Tumour tissue (approximate, within ranges of glioma relaxometry such as MR fingerprinting, Badve et al.,
AJNR 2017;38:492-499): vasogenic oedema has more water, so longer T1/T2 than WM; necrosis is fluid-like;
viable (enhancing) tumour has long T1 before contrast.
Gadolinium: T1 shortening 1/T1 = 1/T1_0 + r1 C with r1 = 3.7 L mmol^-1 s^-1 (gadopentetate in plasma at 3 T,
Rohrer et al., Invest Radiol 2005;40:715-724). Enhancing tumour has an effective concentration of a few
tenths of mM after a 0.1 mmol/kg dose; normal brain, behind an intact blood-brain barrier, only its blood
volume's share (a few hundredths).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

R1_GADOLINIUM_PER_MM_MS = 3.7e-3  # r1 = 3.7 /(mM s), in 1/(mM ms)
NOMINAL_CSF_T1_MS = 4000.0  # the value a FLAIR protocol's inversion time is tuned to null


@dataclass(frozen=True)
class Tissue:
    """Relaxation times (ms), relative proton density, and effective gadolinium concentration (mM) in T1ce."""

    t1_ms: float
    t2_ms: float
    pd: float
    gd_mM: float = 0.0

    def t1_post_contrast_ms(self) -> float:
        return 1.0 / (1.0 / self.t1_ms + R1_GADOLINIUM_PER_MM_MS * self.gd_mM)


NOMINAL_TISSUES: dict[str, Tissue] = {
    "wm": Tissue(t1_ms=832.0, t2_ms=80.0, pd=0.69, gd_mM=0.004),
    "gm": Tissue(t1_ms=1331.0, t2_ms=110.0, pd=0.80, gd_mM=0.008),
    "csf": Tissue(t1_ms=4000.0, t2_ms=2000.0, pd=1.00, gd_mM=0.0),
    "oedema": Tissue(t1_ms=1400.0, t2_ms=150.0, pd=0.85, gd_mM=0.005),
    "necrosis": Tissue(t1_ms=2500.0, t2_ms=300.0, pd=0.90, gd_mM=0.0),
    "enhancing": Tissue(t1_ms=1700.0, t2_ms=130.0, pd=0.85, gd_mM=0.5),
}
TISSUES: tuple[str, ...] = tuple(NOMINAL_TISSUES)
# Per-subject log-normal jitter (relative std) of (T1, T2, PD). Normal tissues share most of it, so the GM/WM
# ratios stay as stable as in healthy adults; each tissue adds a little of its own. Tumour tissue varies more.
_SHARED_JITTER = np.array([0.05, 0.05, 0.02])
_OWN_JITTER = {
    "wm": np.array([0.02, 0.02, 0.01]),
    "gm": np.array([0.02, 0.02, 0.01]),
    "csf": np.array([0.02, 0.03, 0.0]),
    "oedema": np.array([0.05, 0.10, 0.03]),
    "necrosis": np.array([0.10, 0.15, 0.03]),
    "enhancing": np.array([0.08, 0.10, 0.03]),
}


def draw_tissues(rng: np.random.Generator) -> dict[str, Tissue]:
    """Tissue parameters of one subject: nominal values with log-normal jitter; enhancing Gd in 0.3-0.8 mM."""
    # Normal draws truncated at 2 std: a subject's tissue is not an outlier in several ways at once.
    shared = np.clip(rng.normal(0.0, 1.0, size=3), -2.0, 2.0) * _SHARED_JITTER
    out = {}
    for name, nominal in NOMINAL_TISSUES.items():
        own = np.clip(rng.normal(0.0, 1.0, size=3), -2.0, 2.0) * _OWN_JITTER[name]
        t1, t2, pd = np.exp(shared + own)
        tissue = replace(
            nominal,
            t1_ms=round(nominal.t1_ms * float(t1), 3),
            t2_ms=round(nominal.t2_ms * float(t2), 3),
            pd=round(min(nominal.pd * float(pd), 1.0), 5),
        )
        if name == "enhancing":
            tissue = replace(tissue, gd_mM=round(float(rng.uniform(0.3, 0.8)), 4))
        out[name] = tissue
    return out


@dataclass(frozen=True)
class Sequence:
    """One acquisition: ``kind`` is "spin_echo" or "inversion_recovery"; times in ms."""

    name: str
    kind: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None = None
    gadolinium: bool = False

    def signal(self, tissue: Tissue) -> float:
        """Signed steady-state signal of one tissue (PD times longitudinal times transverse factor)."""
        t1 = tissue.t1_post_contrast_ms() if self.gadolinium else tissue.t1_ms
        transverse = math.exp(-self.te_ms / tissue.t2_ms)
        recovery = math.exp(-self.tr_ms / t1)
        if self.kind == "spin_echo":
            # S = PD (1 - exp(-TR/T1)) exp(-TE/T2)  (TE << TR)
            return tissue.pd * (1.0 - recovery) * transverse
        if self.kind == "inversion_recovery":
            # S = PD (1 - 2 exp(-TI/T1) + exp(-TR/T1)) exp(-TE/T2): a 180 degree inversion, recovery for TI,
            # full recovery between inversions ignored beyond the exp(-TR/T1) term; signed (before magnitude).
            if self.ti_ms is None:
                raise ValueError(f"inversion-recovery sequence {self.name!r} has no inversion time")
            return tissue.pd * (1.0 - 2.0 * math.exp(-self.ti_ms / t1) + recovery) * transverse
        raise ValueError(f"unknown sequence kind {self.kind!r}")

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def flair_null_ti_ms(tr_ms: float, t1_ms: float = NOMINAL_CSF_T1_MS) -> float:
    """Inversion time that nulls a tissue of ``t1_ms``: 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0."""
    return t1_ms * math.log(2.0 / (1.0 + math.exp(-tr_ms / t1_ms)))


def draw_sequences(rng: np.random.Generator) -> dict[str, Sequence]:
    """Per-subject protocol within clinical 3 T ranges.

    * T1w: spin echo (TR 400-650, TE 8-15) or an MPRAGE-like inversion-recovery gradient echo (inversion
      spacing 2000-2600, TE 2.5-4), half of the subjects each. The MPRAGE formula has no readout train, whose
      excitations pull the magnetisation towards its steady state; an effective TI of 1000-1300 ms (nominal
      ~900 ms at 3 T) stands in for that and gives MPRAGE-like GM/WM (~0.7) and CSF/WM (~0.2) ratios.
      T1ce repeats the same sequence after gadolinium, as clinical protocols do.
    * T2w: (turbo) spin echo, TR 3000-6000, TE 80-120.
    * FLAIR: TR 8000-11000, TE 90-140, TI within +-3% of the CSF null for the drawn TR (~2.2-2.6 s).
    """
    u = rng.uniform
    if u() < 0.5:
        t1 = Sequence("t1", "spin_echo", tr_ms=round(u(400, 650), 2), te_ms=round(u(8, 15), 3))
    else:
        t1 = Sequence(
            "t1", "inversion_recovery", tr_ms=round(u(2000, 2600), 2), te_ms=round(u(2.5, 4.0), 3),
            ti_ms=round(u(1000, 1300), 2),
        )
    t2 = Sequence("t2", "spin_echo", tr_ms=round(u(3000, 6000), 2), te_ms=round(u(80, 120), 3))
    flair_tr = round(u(8000, 11000), 2)
    flair = Sequence(
        "flair", "inversion_recovery", tr_ms=flair_tr, te_ms=round(u(90, 140), 3),
        ti_ms=round(flair_null_ti_ms(flair_tr) * u(0.97, 1.03), 2),
    )
    t1ce = replace(t1, name="t1ce", gadolinium=True)
    return {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}


def mix_signals(fractions: dict[str, np.ndarray], tissues: dict[str, Tissue], sequence: Sequence) -> np.ndarray:
    """Noise-free image: |sum_k fraction_k * signal_k| over the tissues present (float32)."""
    image: np.ndarray | None = None
    for name, fraction in fractions.items():
        term = fraction * np.float32(sequence.signal(tissues[name]))
        image = term if image is None else np.add(image, term, out=image)
    if image is None:
        raise ValueError("no tissue fractions to mix")
    return np.abs(image, out=image)
