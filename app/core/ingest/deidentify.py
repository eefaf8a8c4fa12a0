"""De-identification by the Basic Application Level Confidentiality Profile (PS3.15 Annex E, Table E.1-1).

A table of ours, by keyword, with the profile's actions:
  D  replace with a dummy value of the same VR      Z  replace with a zero-length value
  X  remove                                         U  replace the UID by one mapped from it
Where the table offers a choice (X/Z, Z/D, X/D, X/Z/D, X/Z/U*), the least revealing choice that keeps the
instance valid is taken: Z for attributes a module requires to be present (Type 2), X otherwise, U for UIDs.
Beyond the table, as the profile requires: every private element is removed (no Retain Safe Private option),
every remaining Person Name is emptied, every remaining UID that is not a registered DICOM UID (SOP classes,
transfer syntaxes, coding schemes...) is mapped, and Patient Identity Removed (0012,0062) = YES with the
De-identification Method (0012,0063) and its code (DCM 113100) are added. The rules apply inside sequences too.

UID mapping is deterministic: the new UID is the root (DEIDENTIFY_UID_ROOT, 2.25 by default) followed by a
number made from a SHA-256 of the salt and the original UID, so every instance of a study (sent in any order,
through any door, before or after a restart) gets the same new Study, Series and referenced UIDs, and links
between instances (Frame of Reference, references in SR/SEG/RT) stay consistent. Set a secret salt in the rules
file when the original UIDs must not be confirmable by someone who knows them.

Not covered (the profile's options, or beyond header data): Clean Pixel Data (burned-in text), Clean
Descriptors, Retain Longitudinal Temporal Information, Retain Safe Private, and text inside free-form
descriptions that the table keeps.
"""

from __future__ import annotations

import hashlib
from typing import Final

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

PROFILE_NAME: Final = "PS3.15 E.1 Basic Application Level Confidentiality Profile"

def _words(text: str) -> list[str]:
    return text.split()


# -- PS3.15 Table E.1-1, Basic Profile column (keywords as in PS3.6) ------------------------------------------
_UIDS: Final = _words(
    """
StudyInstanceUID SeriesInstanceUID SOPInstanceUID MediaStorageSOPInstanceUID FrameOfReferenceUID
ReferencedSOPInstanceUID ReferencedFrameOfReferenceUID RelatedFrameOfReferenceUID
SynchronizationFrameOfReferenceUID StorageMediaFileSetUID DimensionOrganizationUID IrradiationEventUID
ConcatenationUID DeviceUID FiducialUID InstanceCreatorUID UID DoseReferenceUID
PresentationDisplayCollectionUID PresentationSequenceCollectionUID ReferencedSOPInstanceUIDInFile
RequestedSOPInstanceUID TemplateExtensionCreatorUID TemplateExtensionOrganizationUID TransactionUID
ContextGroupExtensionCreatorUID SpecimenUID TargetUID SourceFrameOfReferenceUID
ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
"""
)

# Z: required (Type 2) in their modules, so emptied rather than removed.
_ZERO: Final = _words(
    """
PatientName PatientID PatientBirthDate PatientSex AccessionNumber ReferringPhysicianName StudyID StudyDate
StudyTime ContentCreatorName FillerOrderNumberImagingServiceRequest PlacerOrderNumberImagingServiceRequest
VerifyingObserverIdentificationCodeSequence ContentDate ContentTime ConsentForClinicalTrialUseSequence
"""
)

# D: a dummy value keeps the meaning "someone/something was here" where a value is required (Type 1).
_DUMMY: Final = _words(
    """
VerifyingObserverName VerifyingOrganization PersonName GraphicAnnotationSequence
"""
)

_REMOVE: Final = _words(
    """
AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime AcquisitionTime
AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription ActualHumanPerformersSequence
AdditionalPatientHistory AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription
AdmittingTime AffectedSOPInstanceUID Allergies AuthorObserverSequence BranchOfService CassetteID
CommentsOnThePerformedProcedureStep ConfidentialityConstraintOnPatientDataDescription
ContentCreatorIdentificationCodeSequence ContributionDescription CountryOfResidence CurrentPatientLocation
CustodialOrganizationSequence DataSetTrailingPadding DerivationDescription DetectorID DeviceSerialNumber
DigitalSignaturesSequence DischargeDiagnosisDescription DistributionAddress DistributionName EthnicGroup
FrameComments GantryID GeneratorID HumanPerformerName HumanPerformerOrganization IconImageSequence
IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions
InstitutionAddress InstitutionCodeSequence InstitutionName InstitutionalDepartmentName
InsurancePlanIdentification IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence
InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer InterpretationRecorder
InterpretationText InterpretationTranscriber IssuerOfAdmissionID IssuerOfPatientID IssuerOfServiceEpisodeID
MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence ModifiedImageDescription
ModifyingDeviceID NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults Occupation
OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber OrderEnteredBy OrderEntererLocation
OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence OtherPatientNames ParticipantSequence
PatientAddress PatientAge PatientBirthName PatientBirthTime PatientComments PatientInsurancePlanCodeSequence
PatientMotherBirthName PatientPrimaryLanguageCodeSequence PatientReligiousPreference PatientSexNeutered
PatientSize PatientState PatientTelephoneNumbers PatientTransportArrangements PatientWeight PerformedLocation
PerformedProcedureStepDescription PerformedProcedureStepEndDate PerformedProcedureStepEndTime
PerformedProcedureStepID PerformedProcedureStepStartDate PerformedProcedureStepStartTime
PerformedStationAETitle PerformedStationGeographicLocationCodeSequence PerformedStationName
PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress PersonTelephoneNumbers
PhysicianApprovingInterpretation PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
PhysiciansReadingStudyIdentificationSequence PlateID PreMedication PregnancyStatus ProtocolName
ReasonForStudy ReasonForTheImagingServiceRequest ReferencedDigitalSignatureSequence
ReferencedPatientAliasSequence ReferencedPatientSequence ReferencedSOPInstanceMACSequence
ReferringPhysicianAddress ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers
RegionOfResidence RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments
RequestedProcedureDescription RequestedProcedureID RequestedProcedureLocation RequestingPhysician
RequestingService ResultsComments ResultsDistributionListSequence ResultsIDIssuer
ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
ScheduledPerformingPhysicianIdentificationSequence ScheduledPerformingPhysicianName
ScheduledProcedureStepDescription ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
ScheduledProcedureStepLocation ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime
ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence ScheduledStationName
ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle SeriesDate
SeriesDescription SeriesTime ServiceEpisodeDescription ServiceEpisodeID SmokingStatus SpecialNeeds StationName
StudyComments StudyDescription StudyIDIssuer TextComments TextString TimezoneOffsetFromUTC TopicAuthor
TopicKeywords TopicSubject TopicTitle VisitComments AdmittingDiagnosesCodeSequence
PatientBirthDateInAlternativeCalendar PatientDeathDateInAlternativeCalendar ResponsibleOrganization
ResponsiblePerson InstanceCreationDate InstanceCreationTime OverlayDate OverlayTime CurveDate CurveTime
"""
)


def _tags(keywords: list[str]) -> frozenset[BaseTag]:
    found = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"not a DICOM keyword in the de-identification table: {keyword}")
        found.add(Tag(tag))
    return frozenset(found)


UID_TAGS: Final = _tags(_UIDS)
ZERO_TAGS: Final = _tags(_ZERO)
DUMMY_TAGS: Final = _tags(_DUMMY)
REMOVE_TAGS: Final = _tags(_REMOVE)
BASIC_PROFILE_TAGS: Final = UID_TAGS | ZERO_TAGS | DUMMY_TAGS | REMOVE_TAGS

_DUMMY_BY_VR: Final[dict[str, object]] = {
    "PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANONYMOUS", "LT": "ANONYMOUS", "ST": "ANONYMOUS",
    "UT": "ANONYMOUS", "CS": "ANONYMOUS", "AE": "ANONYMOUS", "DA": "19000101", "TM": "000000",
    "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0", "UI": "2.25.0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0,
}  # fmt: skip
_KEEP_UID_TAGS: Final = _tags(
    ["SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
     "ImplementationClassUID", "AffectedSOPClassUID", "ReferencedSOPClassUIDInFile",
     "ReferencedTransferSyntaxUIDInFile", "CodingSchemeUID", "ContextUID", "MappingResourceUID"]
)  # fmt: skip


class UIDMapper:
    """Original UID -> replacement UID under `root`, the same every time for the same original."""

    def __init__(self, root: str = "2.25", salt: str = "") -> None:
        self.root = root.rstrip(".")
        self.salt = salt

    def __call__(self, uid: str) -> str:
        digest = hashlib.sha256(f"{self.salt}\x00{uid}".encode()).digest()
        number = str(int.from_bytes(digest[:16], "big"))  # 128 bits: at most 39 digits, as 2.25 UUID UIDs
        room = 64 - len(self.root) - 1
        return f"{self.root}.{number[:room].lstrip('0') or '0'}"


def deidentify(ds: Dataset, mapper: UIDMapper) -> None:
    """De-identify `ds` in place (File Meta included) by the Basic Profile, as described above."""
    _clean(ds, mapper)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = PROFILE_NAME
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])


def _clean(ds: Dataset, mapper: UIDMapper) -> None:
    for element in list(ds):
        tag = element.tag
        if tag.is_private:
            del ds[tag]
            continue
        if tag in REMOVE_TAGS:
            del ds[tag]
        elif tag in ZERO_TAGS:
            ds[tag] = DataElement(tag, element.VR, [] if element.VR == "SQ" else None)
        elif tag in DUMMY_TAGS:
            if element.VR == "SQ":
                continue  # a dummy sequence: kept, its items cleaned below
            ds[tag] = DataElement(tag, element.VR, _DUMMY_BY_VR.get(element.VR, "ANONYMOUS"))
        elif element.VR == "UI" and element.value:
            if tag in UID_TAGS or (tag not in _KEEP_UID_TAGS and not _registered(element.value)):
                ds[tag] = DataElement(tag, "UI", _map_uids(element.value, mapper))
        elif element.VR == "PN" and element.value:
            ds[tag] = DataElement(tag, "PN", None)  # any other person name: gone
        if tag in ds and ds[tag].VR == "SQ":
            for item in ds[tag].value:
                _clean(item, mapper)


def _values(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        return [str(v) for v in value]
    return [str(value)]


def _registered(value: object) -> bool:
    return all(v in UID_dictionary for v in _values(value))


def _map_uids(value: object, mapper: UIDMapper) -> object:
    mapped = [mapper(v) for v in _values(value)]
    return mapped[0] if isinstance(value, str) else mapped
