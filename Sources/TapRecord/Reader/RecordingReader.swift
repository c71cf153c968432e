import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// How a recording file ended.
public enum RecordTail: Sendable, Equatable {
    /// The recorder closed it in order (`recordingEnded`) or handed over to the next file (`segmentEnd`).
    case complete
    /// It ends at a record boundary without an end marker: the recorder was stopped before it could close it.
    case unterminated
    /// The last bytes do not form a sound record (cut short or failing the checksum): a torn tail, skipped.
    /// `offset` is where the torn record starts; `bytes` how many bytes from there on were skipped.
    case torn(offset: UInt64, bytes: UInt64, reason: String)
}

/// Reads the records of one recording file in order, streaming: memory holds one record at a time (plus a read
/// buffer), whatever the file's size.
///
/// A damaged tail is not an error: `next()` returns nil at the first record that is incomplete or fails its
/// checksum, and `tail` says what was skipped. Only a file that is not a recording at all, or of another major
/// version, makes `init` throw.
public final class RecordingReader {
    public let path: String
    /// The minor version of the file's format.
    public private(set) var minorVersion: UInt16 = 0
    /// Set when `next()` has returned nil.
    public private(set) var tail: RecordTail?
    private var fd: Int32
    private var buffer = ByteBuffer()
    private var atEOF = false
    /// File offset of `buffer`'s reader index.
    private var offset: UInt64 = 0
    private var sawEnd = false

    /// Opens `path` and checks its header.
    ///
    /// - Throws: `RecordFormatError` when the file cannot be read, is not a recording, or has another major version.
    public init(path: String) throws(RecordFormatError) {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RecordFormatError("cannot open \(path): \(String(cString: strerror(errno)))") }

        guard fill(RecordFormat.fileHeaderSize), let header = buffer.readBytes(length: RecordFormat.fileHeaderSize)
        else {
            throw RecordFormatError("\(path) is not a gitaly-tap recording: shorter than the 16-byte header")
        }
        guard Array(header[0..<8]) == RecordFormat.magic else {
            throw RecordFormatError("\(path) is not a gitaly-tap recording (no GTAP magic)")
        }
        let major = UInt16(header[8]) << 8 | UInt16(header[9])
        guard major == RecordFormat.majorVersion else {
            throw RecordFormatError(
                "\(path) is a recording of format version \(major); this gitaly-tap reads version \(RecordFormat.majorVersion)"
            )
        }
        minorVersion = UInt16(header[10]) << 8 | UInt16(header[11])
        offset = UInt64(RecordFormat.fileHeaderSize)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// Reads until `buffer` holds `count` readable bytes or the file ends; true when it does.
    private func fill(_ count: Int) -> Bool {
        while buffer.readableBytes < count, !atEOF {
            buffer.discardReadBytes()
            let want = max(count - buffer.readableBytes, 1 << 20)
            buffer.reserveCapacity(minimumWritableBytes: want)
            let n = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { raw in
                var got: Int
                repeat { got = read(fd, raw.baseAddress, raw.count) } while got < 0 && errno == EINTR
                return max(got, 0)
            }
            if n == 0 { atEOF = true }
        }
        return buffer.readableBytes >= count
    }

    /// The next sound record, or nil at the end of the file or at a torn tail (see `tail`).
    ///
    /// - Throws: `RecordFormatError` when a record passes its checksum but its body does not fit its type (a writer
    ///   bug, not a torn tail).
    public func next() throws(RecordFormatError) -> SessionRecord? {
        guard tail == nil else { return nil }
        guard fill(4) else {
            finishAt(partial: buffer.readableBytes, reason: "a record's length field is cut short")
            return nil
        }
        let length = Int(buffer.getInteger(at: buffer.readerIndex, as: UInt32.self)!)
        guard length >= 1, length <= RecordFormat.maxRecordLength else {
            tornHere(reason: "a record length of \(length) bytes is impossible")
            return nil
        }
        guard fill(4 + length + 4) else {
            tornHere(reason: "the last record is cut short (\(buffer.readableBytes) of \(4 + length + 4) bytes)")
            return nil
        }
        let crc = buffer.withUnsafeReadableBytes { raw in
            CRC32.update(0, UnsafeRawBufferPointer(rebasing: raw[0..<(4 + length)]))
        }
        let stored = buffer.getInteger(at: buffer.readerIndex + 4 + length, as: UInt32.self)!
        guard crc == stored else {
            tornHere(reason: "a record fails its checksum")
            return nil
        }
        let type = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self)!
        // The body is copied out: records outlive the read buffer, which is reused.
        let body = ByteBuffer(bytes: buffer.viewBytes(at: buffer.readerIndex + 5, length: length - 1)!)
        buffer.moveReaderIndex(forwardBy: 4 + length + 4)
        offset += UInt64(4 + length + 4)
        let record = try SessionRecord.decode(type: type, body: body)
        switch record {
        case .recordingEnded, .segmentEnd: sawEnd = true
        default: break
        }
        return record
    }

    private func finishAt(partial: Int, reason: String) {
        if partial == 0 {
            tail = sawEnd ? .complete : .unterminated
        } else {
            tornHere(reason: reason)
        }
    }

    private func tornHere(reason: String) {
        // Count what is left without keeping it.
        var rest = UInt64(buffer.readableBytes)
        buffer.clear()
        while !atEOF {
            _ = fill(1 << 20)
            rest += UInt64(buffer.readableBytes)
            buffer.clear()
        }
        tail = .torn(offset: offset, bytes: rest, reason: reason)
    }

    /// Every record of the recording that starts at `path`, following `segmentEnd` into the next files.
    ///
    /// - Returns: the records and how each file ended.
    /// - Throws: `RecordFormatError` when a file cannot be read or a record's body is inconsistent.
    public static func readAll(path: String) throws(RecordFormatError) -> (
        records: [SessionRecord], tails: [(String, RecordTail)]
    ) {
        var records: [SessionRecord] = []
        let tails = try forEachRecord(path: path) { records.append($0) }
        return (records, tails)
    }

    /// Hands every record of the recording that starts at `path` to `body`, one at a time, following
    /// `segmentEnd` into the next files; returns how each file ended.
    ///
    /// - Throws: `RecordFormatError` when a file cannot be read or a record's body is inconsistent.
    public static func forEachRecord(path: String, _ body: (SessionRecord) -> Void) throws(RecordFormatError) -> [(
        String, RecordTail
    )] {
        var tails: [(String, RecordTail)] = []
        var current: String? = path
        var seen: Set<String> = []
        while let file = current, !seen.contains(file) {
            seen.insert(file)
            current = nil
            let reader = try RecordingReader(path: file)
            while let record = try reader.next() {
                if case .segmentEnd(_, let next) = record {
                    let dir = file.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(
                        separator: "/")
                    let name = next.split(separator: "/").last.map(String.init) ?? next
                    current = dir.isEmpty ? name : dir + "/" + name
                }
                body(record)
            }
            tails.append((file, reader.tail ?? .unterminated))
        }
        return tails
    }
}
