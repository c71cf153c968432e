/// Constants of the session recording format (docs/recording.md).
///
/// A file is a 16-byte header followed by records. Each record is `length u32 | type u8 | body | crc32 u32`,
/// big-endian, where `length` counts type and body and the CRC covers length, type and body. A reader stops at the
/// first record that is incomplete or fails its checksum: that is a torn tail, and everything before it is sound.
public enum RecordFormat {
    /// `\x89GTAP\r\n\x1a`: not text (high bit), names the format, and breaks visibly under newline conversion.
    public static let magic: [UInt8] = [0x89, 0x47, 0x54, 0x41, 0x50, 0x0D, 0x0A, 0x1A]
    /// Readers refuse another major version.
    public static let majorVersion: UInt16 = 1
    /// Minor versions only add record types or trailing body fields; readers skip what they do not know.
    public static let minorVersion: UInt16 = 0
    /// Magic, major, minor, 4 reserved bytes.
    public static let fileHeaderSize = 16
    /// Length field, type byte, CRC.
    public static let recordOverhead = 9
    /// No record is longer; a larger length field means corruption, not a big record.
    public static let maxRecordLength = 256 << 20

    /// The 16 bytes every file starts with.
    public static var fileHeader: [UInt8] {
        magic + [
            UInt8(majorVersion >> 8), UInt8(majorVersion & 0xFF), UInt8(minorVersion >> 8), UInt8(minorVersion & 0xFF),
        ]
            + [0, 0, 0, 0]
    }
}

/// Record type bytes. Unknown types are skipped by readers (they still pass the CRC check).
public enum RecordType: UInt8, Sendable, CaseIterable {
    case segment = 0x01
    case connectionOpened = 0x02
    case connectionClosed = 0x03
    case callStarted = 0x10
    case responseHeaders = 0x11
    case message = 0x12
    case requestEnded = 0x13
    case trailers = 0x14
    case callEnded = 0x15
    case sidechannelOpened = 0x20
    case sidechannelData = 0x21
    case sidechannelEnded = 0x22
    case notice = 0x30
    case segmentEnd = 0x31
    case recordingEnded = 0x32
}

/// Why a recording cannot be read at all (a damaged tail is not an error: see `RecordTail`).
public struct RecordFormatError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
