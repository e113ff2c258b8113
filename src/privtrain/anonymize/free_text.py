"""What personal data a free-text column holds, for ``anonymize inspect``.

Two detectors, tried in this order:

* Microsoft Presidio's ``AnalyzerEngine`` (rule recognizers plus spaCy named-entity
  recognition), used only when ``presidio_analyzer`` is importable and an English
  spaCy model is already installed: nothing is ever downloaded (Presidio itself would
  fetch ``en_core_web_lg`` when it is missing, so the model is checked first). It
  reports what the texts hold and, run again on the scrubbed texts, what the
  ``scrub`` operator would leave behind (a name the table does not hold, a place).
* Otherwise the ``scrub`` operator's own patterns and the table's known names
  (:mod:`privtrain.anonymize.operators.scrub`): what they find is what ``scrub``
  replaces, so nothing can be reported as left behind.

Both look at up to ``SAMPLE_TEXTS`` distinct non-missing values.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

from privtrain.anonymize.operators.options import SCRUB_KINDS
from privtrain.anonymize.operators.scrub import PLACEHOLDERS, scrub_texts

SAMPLE_TEXTS = 200
# spaCy's entities get Presidio's default score 0.85; most pattern recognizers score
# below 0.6 without context words, and would flag every number as a phone.
PRESIDIO_MIN_SCORE = 0.6
SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")
# What singles a person out. DATE_TIME and NRP (nationality, religion, politics) are
# left to the owner: they fill ordinary prose and scrub does not touch them.
PRESIDIO_ENTITIES = (
    "PERSON",
    "LOCATION",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IP_ADDRESS",
    "URL",
    "US_SSN",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_DRIVER_LICENSE",
    "US_PASSPORT",
    "US_BANK_NUMBER",
    "MEDICAL_LICENSE",
    "UK_NHS",
)


@dataclass(frozen=True)
class TextFindings:
    """Personal data found in a sample of a free-text column.

    Attributes
    ----------
    detector : str
        Which detector looked, in words (``"Presidio 2.2.358 with spaCy en_core_web_lg"``
        or ``"built-in patterns (presidio-analyzer is not installed)"``).
    sampled : int
        Distinct texts examined.
    found : dict[str, int]
        Kind (scrub's ``email``, ``name``... or a Presidio entity type) -> sampled texts
        holding at least one.
    missed : dict[str, int]
        Presidio entity type -> scrubbed sampled texts still holding one (always empty
        with the built-in detector, which finds only what scrub replaces).
    """

    detector: str
    sampled: int
    found: dict[str, int] = field(default_factory=dict)
    missed: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _presidio() -> tuple[Any, str]:
    """(AnalyzerEngine or None, detector description); loaded once per process."""
    if importlib.util.find_spec("presidio_analyzer") is None:
        return None, "built-in patterns (presidio-analyzer is not installed)"
    try:
        import spacy

        model = next((m for m in SPACY_MODELS if spacy.util.is_package(m)), None)
        if model is None:
            return None, "built-in patterns (no English spaCy model is installed for Presidio)"
        from importlib.metadata import version

        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        # Presidio warns about recognizers of other languages while loading.
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
        engine = AnalyzerEngine(
            nlp_engine=NlpEngineProvider(nlp_configuration=config).create_engine(),
            supported_languages=["en"],
        )
        return engine, f"Presidio {version('presidio-analyzer')} with spaCy {model}"
    except Exception as exc:  # an optional extra that is broken must not break inspect
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"built-in patterns (Presidio failed to load: {reason})"


def _entity_counts(engine: Any, texts: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for text in texts:
        results = engine.analyze(text=text, language="en", entities=list(PRESIDIO_ENTITIES))
        for kind in {r.entity_type for r in results if r.score >= PRESIDIO_MIN_SCORE}:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def examine_free_text(
    values: pd.Series, names: frozenset[str], region: str | None, *, presidio: bool = True
) -> TextFindings:
    """Look for personal data in a sample of a free-text column.

    Parameters
    ----------
    values : pd.Series
        The column, any dtype; missing cells are ignored.
    names : frozenset of str
        Known names (:func:`privtrain.anonymize.operators.scrub.known_names`) that scrub
        would replace.
    region : str | None
        Phone region of numbers written without ``+`` (``"US"``).
    presidio : bool
        Try Presidio first; False uses the built-in patterns only.

    Returns
    -------
    TextFindings
    """
    text = values.dropna().astype("string").str.strip()
    sample = pd.Series(text[text != ""].unique()[:SAMPLE_TEXTS], dtype="string")
    scrubbed = scrub_texts(sample, SCRUB_KINDS, names, region)
    engine, detector = _presidio() if presidio else (None, "built-in patterns")
    if engine is not None:
        return TextFindings(
            detector=detector,
            sampled=len(sample),
            found=_entity_counts(engine, sample.tolist()),
            missed=_entity_counts(engine, scrubbed.tolist()),
        )
    found: dict[str, int] = {}
    for kind in SCRUB_KINDS:
        hits = int(scrubbed.str.contains(PLACEHOLDERS[kind], regex=False).sum())
        if hits:
            found[kind] = hits
    return TextFindings(detector=detector, sampled=len(sample), found=found)
