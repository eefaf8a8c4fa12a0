"""Ingest rules: the seeds' `onBeforeStore` / `extractTags`, made declarative, for every door alike.

Loaded once at start-up from INGEST_RULES_FILE (YAML or JSON) and checked completely, so a bad file stops the
archive with the reason (`RulesError`) instead of misbehaving later. Applied by the ingest service to each
instance after its header is read and before anything is written:

```yaml
rules:
  - name: no secondary captures from the old CR       # optional, for the log and the failure reason
    when: {sop_class: [SecondaryCaptureImageStorage], calling_ae: [OLD_CR]}
    reject: "secondary captures are not archived"      # or {reason: ..., status: 0x0124}
  - when: {missing: [PatientID]}
    reject: "a Patient ID is required"
  - when: {calling_ae: [SITE_B]}                       # coercions; `when` may be left out (= always)
    prefix: {PatientID: "SITEB-"}                      # idempotent: a value already prefixed is kept
    set: {IssuerOfPatientID: SITE_B, InstitutionName: Site B}
    copy: [{from: PatientID, to: OtherPatientIDs}]
    remove: [PatientComments]
  - when: {modality: [SR]}
    deidentify: true                                   # PS3.15 E.1 Basic Profile (app/core/ingest/deidentify.py)
deidentify: {uid_salt: "a secret"}                    # optional
```

Conditions (`when`): every key given must hold; each list matches any of its values. `sop_class` takes UIDs
or pydicom keywords, `modality` values of (0008,0060), `calling_ae` the DIMSE peer's AE title (never matches for
STOW-RS or import), `missing` attributes (keyword or `ggggeeee`) absent or empty. Attributes are named by
keyword or tag. All reject rules are looked at first; then coercions in file order; de-identification last.

Failure reasons for a rejected instance (PS3.4 B.2.3, PS3.7 C, PS3.18 Table 10.5.3-1), unless a rule's `status`
names another of them: a rule on `sop_class` answers 0x0122 (Refused: SOP Class not supported), one on
`calling_ae` 0x0124 (Refused: Not authorized: the peer may not store here), and one on `modality` or `missing`
0xA900 (Error: Data Set does not match SOP Class: the data set lacks or carries what this archive's policy
requires, which is the data-set-content failure both standards name). A coerced instance answers success with
warning 0xB000 (Coercion of Data Elements).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from app.core.ingest.deidentify import UIDMapper, deidentify
from app.core.ingest.outcomes import FailureReason

_KEYWORD_TO_UID = {entry[4]: uid for uid, entry in UID_dictionary.items() if entry[4]}


class RulesError(ValueError):
    """The rules file cannot be used; the message says where and why."""


Edit = Callable[[Dataset], None]


def attribute_tag(name: str) -> BaseTag:
    """A keyword (`PatientID`) or an 8-digit hex tag (`00100020`) -> the tag; ValueError if neither."""
    text = name.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return Tag(int(text, 16))
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(f"{name!r} is neither a DICOM keyword nor a tag ggggeeee")
    return Tag(tag)


def _sop_class_uid(name: str) -> str:
    name = name.strip()
    if name in _KEYWORD_TO_UID:
        return str(_KEYWORD_TO_UID[name])
    if name and all(c.isdigit() or c == "." for c in name):
        return name
    raise ValueError(f"{name!r} is neither a SOP Class UID nor a known SOP Class keyword")


def _list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_list)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Condition(_Strict):
    sop_class: StrList | None = None
    modality: StrList | None = None
    calling_ae: StrList | None = None
    missing: StrList | None = None

    @model_validator(mode="after")
    def _check(self) -> Condition:
        self.sop_class = [_sop_class_uid(v) for v in self.sop_class] if self.sop_class else self.sop_class
        for name in self.missing or []:
            attribute_tag(name)
        return self

    def matches(self, ds: Dataset, calling_ae: str | None) -> bool:
        if self.sop_class is not None and str(ds.get("SOPClassUID", "")) not in self.sop_class:
            return False
        if self.modality is not None and str(ds.get("Modality", "")).strip() not in self.modality:
            return False
        if self.calling_ae is not None and (calling_ae or "").strip() not in [a.strip() for a in self.calling_ae]:
            return False
        if self.missing is not None:
            return any(_empty(ds, attribute_tag(name)) for name in self.missing)
        return True

    def default_failure(self) -> FailureReason:
        if self.sop_class is not None:
            return FailureReason.SOP_CLASS_NOT_SUPPORTED
        if self.calling_ae is not None:
            return FailureReason.NOT_AUTHORIZED
        return FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


class Reject(_Strict):
    reason: str
    status: FailureReason | None = None


class Copy(_Strict):
    source: str = Field(alias="from")
    target: str = Field(alias="to")

    @model_validator(mode="after")
    def _check(self) -> Copy:
        attribute_tag(self.source)
        _writable(attribute_tag(self.target))
        return self


class Rule(_Strict):
    name: str | None = None
    when: Condition = Field(default_factory=Condition)
    reject: Reject | None = None
    set: dict[str, str | int | float | list[str] | None] | None = None
    remove: StrList | None = None
    copy_: list[Copy] | None = Field(None, alias="copy")
    prefix: dict[str, str] | None = None
    deidentify: bool = False

    @model_validator(mode="before")
    @classmethod
    def _reject_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("reject"), str):
            data = {**data, "reject": {"reason": data["reject"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> Rule:
        coerces = bool(self.set or self.remove or self.copy_ or self.prefix or self.deidentify)
        if self.reject is not None and coerces:
            raise ValueError("a rule either rejects or coerces, not both")
        if self.reject is None and not coerces:
            raise ValueError("a rule needs an action: reject, set, remove, copy, prefix or deidentify")
        for name in self.set or {}:
            _writable(attribute_tag(name))
        for name in self.prefix or {}:
            _writable(attribute_tag(name))
        for name in self.remove or []:
            attribute_tag(name)
        return self

    @property
    def label(self) -> str:
        return self.name or "ingest rule"


class DeidentifyOptions(_Strict):
    uid_salt: str = ""
    uid_root: str | None = None  # overrides DEIDENTIFY_UID_ROOT


class RulesFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    deidentify: DeidentifyOptions = Field(default_factory=DeidentifyOptions)


def _writable(tag: BaseTag) -> None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ValueError(f"{tag} is not in the DICOM dictionary: its VR is unknown, so it cannot be set") from None
    if vr == "SQ":
        raise ValueError(f"{keyword_for_tag(tag) or tag} is a sequence: set/copy/prefix take single values")


def _empty(ds: Dataset, tag: BaseTag) -> bool:
    element = ds.get(tag)
    return element is None or element.value in (None, "", b"") or (
        isinstance(element.value, list) and not element.value
    )


def _text(ds: Dataset, tag: BaseTag) -> str | None:
    element = ds.get(tag)
    if element is None or element.value is None:
        return None
    return str(element.value)


@dataclass
class Verdict:
    """What the rules decided for one instance: a rejection, or the edits to make (none: store as is)."""

    reject: tuple[FailureReason, str] | None = None
    edits: list[Edit] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # human-readable, for the outcome and the log


def set_attribute(tag: BaseTag, value: Any) -> Edit:
    def edit(ds: Dataset) -> None:
        if value is None:
            if tag in ds:
                del ds[tag]
        else:
            ds[tag] = DataElement(tag, dictionary_VR(tag), value)

    return edit


def _remove(tag: BaseTag) -> Edit:
    def edit(ds: Dataset) -> None:
        if tag in ds:
            del ds[tag]

    return edit


class IngestRules:
    def __init__(self, config: RulesFile, uid_root: str = "2.25") -> None:
        self.config = config
        self.mapper = UIDMapper(config.deidentify.uid_root or uid_root, config.deidentify.uid_salt)

    @classmethod
    def load(cls, path: Path, uid_root: str = "2.25") -> IngestRules:
        """Read and check a rules file; RulesError with the file name and the reason if it is unusable."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError(f"INGEST_RULES_FILE {path}: cannot read: {exc}") from exc
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise RulesError(f"INGEST_RULES_FILE {path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
        return cls.parse(data if data is not None else {}, uid_root, source=str(path))

    @classmethod
    def parse(cls, data: Mapping[str, Any] | Any, uid_root: str = "2.25", *, source: str = "rules") -> IngestRules:
        try:
            config = RulesFile.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}" for error in exc.errors()
            )
            raise RulesError(f"INGEST_RULES_FILE {source}: {problems}") from None
        return cls(config, uid_root)

    def evaluate(self, ds: Dataset, calling_ae: str | None) -> Verdict:
        """Decide on one instance from its header (pure; cheap when nothing applies)."""
        verdict = Verdict()
        rules = [r for r in self.config.rules if r.when.matches(ds, calling_ae)]
        for rule in rules:
            if rule.reject is not None:
                status = rule.reject.status or rule.when.default_failure()
                verdict.reject = (status, f"{rule.label}: {rule.reject.reason}")
                return verdict
        deidentify_wanted = False
        for rule in rules:
            for name, value in (rule.set or {}).items():
                tag = attribute_tag(name)
                current = _text(ds, tag)
                wanted = None if value is None else str(value)
                if current != wanted and not (wanted is None and tag not in ds):
                    verdict.edits.append(set_attribute(tag, value))
                    verdict.changes.append(f"set {name}")
            for name in rule.remove or []:
                tag = attribute_tag(name)
                if tag in ds:
                    verdict.edits.append(_remove(tag))
                    verdict.changes.append(f"removed {name}")
            for copy in rule.copy_ or []:
                source, target = attribute_tag(copy.source), attribute_tag(copy.target)
                value = _text(ds, source)
                if value is not None and _text(ds, target) != value:
                    verdict.edits.append(set_attribute(target, ds[source].value))
                    verdict.changes.append(f"copied {copy.source} to {copy.target}")
            for name, prefix in (rule.prefix or {}).items():
                tag = attribute_tag(name)
                value = _text(ds, tag)
                if value is not None and value and not value.startswith(prefix):
                    verdict.edits.append(set_attribute(tag, prefix + value))
                    verdict.changes.append(f"prefixed {name}")
            deidentify_wanted = deidentify_wanted or rule.deidentify
        if deidentify_wanted:
            mapper = self.mapper
            verdict.edits.append(lambda full: deidentify(full, mapper))
            verdict.changes.append("de-identified (PS3.15 E.1 Basic Profile)")
        return verdict
