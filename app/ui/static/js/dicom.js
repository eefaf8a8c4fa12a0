// DICOM JSON (PS3.18 F.2) read by tag, and the few tags the console shows.
export const TAG = {
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  StudyInstanceUID: "0020000D",
  StudyDate: "00080020",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  StudyDescription: "00081030",
  ReferringPhysicianName: "00080090",
  ModalitiesInStudy: "00080061",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  SeriesDescription: "0008103E",
  Modality: "00080060",
  BodyPartExamined: "00180015",
  NumberOfSeriesRelatedInstances: "00201209",
  SOPInstanceUID: "00080018",
  ReferencedSOPSequence: "00081199",
  FailedSOPSequence: "00081198",
  OtherFailuresSequence: "0008119A",
  ReferencedSOPInstanceUID: "00081155",
  FailureReason: "00081197",
  WarningReason: "00081196",
};

export function values(dataset, tag) {
  return dataset?.[tag]?.Value ?? [];
}

export function value(dataset, tag) {
  const found = values(dataset, tag)[0];
  if (found && typeof found === "object" && "Alphabetic" in found) return found.Alphabetic;
  return found ?? "";
}

// DOE^JOHN -> DOE, JOHN (family name first, as PS3.5 6.2.1 orders the components).
export function personName(dataset, tag) {
  const name = value(dataset, tag);
  const [family = "", given = "", middle = ""] = String(name).split("^");
  return [family, [given, middle].filter(Boolean).join(" ")].filter(Boolean).join(", ");
}

// 20240131 -> 2024-01-31
export function date(text) {
  const found = String(text || "").match(/^(\d{4})(\d{2})(\d{2})/);
  return found ? `${found[1]}-${found[2]}-${found[3]}` : String(text || "");
}

// 0930 or 093000.5 -> 09:30; a DT 20300101090000 -> 2030-01-01 09:00
export function time(text) {
  const found = String(text || "").match(/^(\d{2})(\d{2})?/);
  return found ? `${found[1]}:${found[2] || "00"}` : "";
}

export function dateTime(text) {
  const whole = String(text || "");
  return [date(whole.slice(0, 8)), time(whole.slice(8))].filter(Boolean).join(" ");
}

// Failure reasons of STOW-RS (PS3.18 Table I.1-1 via PS3.4 B.2.3) and the archive's own (README).
export const FAILURE_REASONS = {
  0x0110: "processing failure",
  0x0111: "duplicate SOP instance",
  0x0122: "SOP class not supported",
  0x0124: "not authorized",
  0xa700: "out of resources",
  0xa900: "data set does not match SOP class",
  0xc000: "cannot understand",
};

// The SOP Instance UID in a Part 10 file's File Meta (PS3.10 7.1: "DICM" at 128, group 0002 in Explicit VR
// Little Endian), read from the first bytes of the file; null when the file is not Part 10.
export async function sopInstanceUidOf(file) {
  const head = new DataView(await file.slice(0, 65536).arrayBuffer());
  if (head.byteLength < 132 || head.getUint32(128, false) !== 0x4449434d) return null;
  let offset = 132;
  while (offset + 8 <= head.byteLength) {
    const group = head.getUint16(offset, true);
    const element = head.getUint16(offset + 2, true);
    if (group !== 0x0002) return null;
    const vr = String.fromCharCode(head.getUint8(offset + 4), head.getUint8(offset + 5));
    let length;
    let start;
    if (["OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV"].includes(vr)) {
      length = head.getUint32(offset + 8, true);
      start = offset + 12;
    } else {
      length = head.getUint16(offset + 6, true);
      start = offset + 8;
    }
    if (start + length > head.byteLength) return null;
    if (element === 0x0003) {
      const bytes = new Uint8Array(head.buffer, start, length);
      return new TextDecoder("ascii").decode(bytes).replace(/[\0 ]+$/, "");
    }
    offset = start + length;
  }
  return null;
}
