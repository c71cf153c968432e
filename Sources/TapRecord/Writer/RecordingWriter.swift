import CTapSupport
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why a recording file could not be opened or written, phrased for the log.
public struct RecordingWriteError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Appends records to a recording: `FILE`, then `FILE.1`, `FILE.2`, ... when a file reaches its size cap.
///
/// Not thread-safe: one writer thread owns it. Every file is created with mode 0600 and starts with the file
/// header and a segment record. Records are buffered and written in blocks; `flush()` pushes them to the kernel.
/// A write error is thrown once and the writer refuses further work (`isStopped`).
///
/// With `directIO` (the default) whole blocks bypass the page cache (`O_DIRECT`): during a burst the kernel then
/// neither copies every byte into its cache nor writes dirty pages back on the machine's CPUs, and a recording of
/// heavy traffic does not evict the repositories Gitaly reads from memory. Direct writes must start and end on
/// `directAlignment`; the short tail a `flush()` leaves goes through the page cache, stays buffered, and is written
/// again (directly, as part of its whole block) once the block fills. Where the file system refuses `O_DIRECT`
/// (tmpfs) every write is buffered.
public final class RecordingWriter {
    /// The first file's path; later files append `.N`.
    public let path: String
    public let limits: RecordingLimits
    private var info: SegmentInfo
    private var fd: Int32 = -1
    /// The same file opened with `O_DIRECT`, or -1.
    private var directFD: Int32 = -1
    /// Whether files are opened for direct I/O at all.
    private let directIO: Bool
    /// The file offset of the first pending byte (aligned while writing directly).
    private var bufferOffset: UInt64 = 0
    /// Pending bytes already written through the page cache by an earlier flush of the tail.
    private var tailWritten = 0
    /// Encoded records not yet written.
    private let pending = PendingBytes(capacity: 1 << 20, alignment: RecordingWriter.directAlignment)
    private var bytesInFile: UInt64 = 0
    /// The largest record (by `encodedSizeEstimate`) that fits in a file next to its opening and closing records.
    private var recordRoom = Int.max
    /// Paths of the files written so far.
    public private(set) var files: [String] = []
    /// True after the file limit was reached or a write failed.
    public private(set) var isStopped = false
    /// Records written (all files).
    public private(set) var recordCount = 0
    /// True while whole blocks go to the file with `O_DIRECT`.
    public var isWritingDirectly: Bool { directFD >= 0 }
    private let clock: @Sendable () -> UInt64

    /// Creates (or truncates) `path` with mode 0600 and writes its header.
    ///
    /// - Parameters:
    ///   - directIO: write whole blocks with `O_DIRECT` where the file system allows it.
    ///   - sessionID: the recording's 16-byte id; random when nil (a fixed one makes two recordings comparable).
    /// - Throws: `RecordingWriteError` naming the file and the system's reason.
    public init(
        path: String, limits: RecordingLimits, listen: String, upstream: String, toolVersion: String,
        directIO: Bool = true, sessionID: [UInt8]? = nil, clock: @escaping @Sendable () -> UInt64
    ) throws(RecordingWriteError) {
        self.path = path
        self.limits = limits
        self.clock = clock
        self.directIO = directIO
        var generator = SystemRandomNumberGenerator()
        let id = sessionID.flatMap { $0.count == 16 ? $0 : nil }
            ?? (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        self.info = SegmentInfo(
            sessionID: id, index: 0, createdTime: clock(), toolVersion: toolVersion, listen: listen, upstream: upstream,
            maxMessageBytes: UInt64(limits.maxMessageBytes), maxFileBytes: limits.maxFileBytes,
            maxSidechannelBytes: UInt64(limits.maxSidechannelBytes), personalMetadataRedacted: limits.redactPersonal)
        try openFile(path)
    }

    deinit {
        closeFile()
    }

    /// The name of file number `index` of the recording at `path`.
    public static func segmentPath(_ path: String, index: Int) -> String {
        index == 0 ? path : "\(path).\(index)"
    }

    private func openFile(_ file: String) throws(RecordingWriteError) {
        let opened = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard opened >= 0 else { throw RecordingWriteError("cannot create recording \(file): \(Self.errnoText())") }
        // An existing file keeps its mode through O_TRUNC; a recording is never readable by others.
        guard fchmod(opened, 0o600) == 0 else {
            let reason = Self.errnoText()
            close(opened)
            throw RecordingWriteError("cannot restrict recording \(file) to mode 0600: \(reason)")
        }
        fd = opened
        if directIO {
            // Refused (EINVAL) by file systems without direct I/O: everything then goes through the page cache.
            directFD = tap_open_direct_for_writing(file)
        }
        files.append(file)
        bytesInFile = 0
        bufferOffset = 0
        tailWritten = 0
        pending.removeAll()
        RecordFormat.fileHeader.withUnsafeBytes { pending.append($0) }
        bytesInFile = UInt64(RecordFormat.fileHeaderSize)
        appendRaw(.segment(info))
        recordRoom = Int(clamping: limits.maxFileBytes) - Int(bytesInFile) - Int(Self.closingReserve)
    }

    private func appendRaw(_ record: SessionRecord) {
        let before = pending.count
        pending.append(record)
        bytesInFile += UInt64(pending.count - before)
        recordCount += 1
    }

    /// Appends `record`, starting the next file first when this one would pass `maxFileBytes`.
    ///
    /// A record too large for any file is made to fit one: a message keeps its first bytes (its record still
    /// gives the real length, as for `maxMessageBytes`), sidechannel bytes are split over several records.
    ///
    /// - Throws: `RecordingWriteError` when writing fails; the writer is stopped afterwards.
    public func append(_ record: SessionRecord) throws(RecordingWriteError) {
        let size = record.encodedSizeEstimate
        guard size > recordRoom else { return try appendWhole(record, size: size) }
        for part in fitted(record, size: size) {
            try appendWhole(part, size: part.encodedSizeEstimate)
        }
    }

    /// What of `record` (of `size`, more than `recordRoom`) fits in a file of its own.
    private func fitted(_ record: SessionRecord, size: Int) -> [SessionRecord] {
        switch record {
        case .message(let call, let time, let direction, let compressed, let length, let payload):
            let keep = max(0, recordRoom - (size - payload.count))
            return [
                .message(
                    call: call, time: time, direction: direction, compressed: compressed, length: length,
                    payload: payload.prefix(keep))
            ]
        case .sidechannelData(let sidechannel, let time, let direction, let payload):
            let step = max(1, recordRoom - (size - payload.readableBytes))
            return stride(from: 0, to: payload.readableBytes, by: step).map { offset in
                .sidechannelData(
                    sidechannel: sidechannel, time: time, direction: direction,
                    payload: payload.getSlice(
                        at: payload.readerIndex + offset, length: min(step, payload.readableBytes - offset))!)
            }
        default:
            return [record]
        }
    }

    private func appendWhole(_ record: SessionRecord, size estimate: Int) throws(RecordingWriteError) {
        guard !isStopped else { return }
        // Room is kept for the records that close a file (next-file pointer, stop notice, end marker).
        let size = UInt64(estimate) + Self.closingReserve
        if bytesInFile + size > limits.maxFileBytes,
            bytesInFile > UInt64(RecordFormat.fileHeaderSize) + Self.closingReserve
        {
            try rotate()
            guard !isStopped else { return }
        }
        appendRaw(record)
        if pending.count >= (directFD >= 0 ? Self.directBlockSize : 1 << 20) {
            try flush(wholeBlocksOnly: true)
        }
    }

    /// Bytes per `pwrite(2)` through the page cache.
    public static let blockSize = 64 * 1024
    /// The most bytes per direct write, and the buffered bytes that start one during a burst.
    public static let directBlockSize = 4 << 20
    /// Offsets and lengths of direct writes are multiples of this (a page: at least any disk's logical block).
    public static let directAlignment = 4096

    /// Sleeps this long per 64 KiB written: a slow disk, for tests of what happens then.
    public var blockDelay: Duration?

    /// An upper bound of the records written when a file is closed.
    static let closingReserve: UInt64 = 1024

    private func rotate() throws(RecordingWriteError) {
        let next = files.count
        guard next < limits.maxFiles else {
            // A deliberate stop: the last file is closed in order, with the end marker its reserve was kept for.
            try finish(
                notice: "recording stopped: \(limits.maxFiles) files of at most \(limits.maxFileBytes) bytes are full")
            return
        }
        let nextPath = Self.segmentPath(path, index: next)
        appendRaw(
            .segmentEnd(time: clock(), nextFile: nextPath.split(separator: "/").last.map(String.init) ?? nextPath))
        try flush()
        closeFile()
        info.index = UInt32(next)
        info.createdTime = clock()
        try openFile(nextPath)
    }

    /// Writes buffered records to the file, in blocks of `blockSize`.
    ///
    /// With `wholeBlocksOnly` (during a burst) the bytes short of a whole block stay buffered for the next call; a
    /// record can then be half in the file, which a reader detects as a torn tail should the process die there.
    public func flush(wholeBlocksOnly: Bool = false) throws(RecordingWriteError) {
        guard fd >= 0, pending.count > 0 else { return }
        if directFD >= 0 { return try flushDirectly(wholeBlocksOnly: wholeBlocksOnly) }
        let total = wholeBlocksOnly ? pending.count / Self.blockSize * Self.blockSize : pending.count
        guard total > 0 else { return }
        let failure = writeOut(fd, pending.bytes[0..<total], at: off_t(bufferOffset), delay: blockDelay)
        pending.removeFirst(total)
        bufferOffset += UInt64(total)
        if let failure { try fail(failure) }
    }

    /// Writes `bytes` to `descriptor` at `offset` in blocks of `blockSize`, sleeping `delay` before each block;
    /// returns the system's reason when a write fails.
    private func writeOut(
        _ descriptor: Int32, _ bytes: Slice<UnsafeRawBufferPointer>, at offset: off_t, delay: Duration?
    ) -> String? {
        var done = 0
        while done < bytes.count {
            if let delay { Self.sleep(delay) }
            let start = bytes.base.baseAddress! + bytes.startIndex + done
            let n = pwrite(descriptor, start, min(Self.blockSize, bytes.count - done), offset + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                return Self.errnoText()
            }
            done += n
        }
        return nil
    }

    private func fail(_ reason: String) throws(RecordingWriteError) -> Never {
        closeFile()
        isStopped = true
        throw RecordingWriteError("cannot write recording \(files.last ?? path): \(reason)")
    }

    /// `flush` while the file is open for direct I/O: aligned whole blocks directly, the tail (unless
    /// `wholeBlocksOnly`) through the page cache at its offset, kept buffered to be written again with its block.
    private func flushDirectly(wholeBlocksOnly: Bool) throws(RecordingWriteError) {
        let whole = pending.count / Self.directAlignment * Self.directAlignment
        if whole > 0 {
            var done = 0
            while done < whole {
                let length = min(Self.directBlockSize, whole - done)
                // The simulated slow disk costs the same per byte either way: one delay per 64 KiB.
                if let delay = blockDelay { Self.sleep(delay * max(1, length / Self.blockSize)) }
                // Straight from the pending bytes: their start is aligned, and so is every block's.
                let n = pwrite(directFD, pending.base + done, length, off_t(bufferOffset) + off_t(done))
                if n < 0, errno == EINTR { continue }
                if n < 0, errno == EINVAL, done == 0 {
                    // The file system accepted O_DIRECT at open but not this write: go on through the page cache.
                    close(directFD)
                    directFD = -1
                    tailWritten = 0
                    return try flush(wholeBlocksOnly: wholeBlocksOnly)
                }
                if n < 0 { try fail(Self.errnoText()) }
                if n < length {
                    // Short (a full disk, a file-size limit): the rest goes through the page cache, which either
                    // takes it or says why not (ENOSPC, EFBIG).
                    let rest = pending.bytes[(done + n)..<(done + length)]
                    if let failure = writeOut(fd, rest, at: off_t(bufferOffset) + off_t(done + n), delay: nil) {
                        try fail(failure)
                    }
                }
                done += length
            }
            pending.removeFirst(whole)
            bufferOffset += UInt64(whole)
            tailWritten = max(0, tailWritten - whole)
        }
        if !wholeBlocksOnly, pending.count > tailWritten {
            let failure = writeOut(
                fd, pending.bytes[tailWritten...], at: off_t(bufferOffset) + off_t(tailWritten), delay: nil)
            if let failure { try fail(failure) }
            tailWritten = pending.count
        }
    }

    /// Writes `notice` (if any) and the end marker, flushes and closes the file.
    public func finish(notice: String? = nil) throws(RecordingWriteError) {
        guard fd >= 0 else { return }
        if let notice { appendRaw(.notice(time: clock(), kind: .recordingStopped, text: notice)) }
        appendRaw(.recordingEnded(time: clock()))
        try flush()
        _ = fsync(fd)
        closeFile()
        isStopped = true
    }

    /// Stops without an end marker (after a failure): what was written stays readable.
    public func abandon() {
        pending.removeAll()
        closeFile()
        isStopped = true
    }

    private func closeFile() {
        if fd >= 0 { close(fd) }
        if directFD >= 0 { close(directFD) }
        fd = -1
        directFD = -1
    }

    private static func sleep(_ delay: Duration) {
        let (seconds, attos) = delay.components
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int(attos / 1_000_000_000))
        var rest = timespec()
        while nanosleep(&ts, &rest) != 0, errno == EINTR { ts = rest }
    }

    private static func errnoText() -> String {
        String(cString: strerror(errno))
    }
}

extension SessionRecord {
    /// The encoded size, give or take the header strings (used only to decide rotation).
    var encodedSizeEstimate: Int {
        switch self {
        case .message(_, _, _, _, _, let payload): return payload.count + 40
        case .sidechannelData(_, _, _, let payload): return payload.readableBytes + 40
        case .callStarted(_, _, _, _, _, _, let path, let headers):
            return headers.reduce(64 + path.utf8.count) { $0 + $1.name.utf8.count + $1.value.count + 7 }
        case .trailers(_, _, _, let headers), .responseHeaders(_, _, let headers):
            return headers.reduce(64) { $0 + $1.name.utf8.count + $1.value.count + 7 }
        case .notice(_, _, let text): return text.utf8.count + 32
        case .segment(let info):
            return info.listen.utf8.count + info.upstream.utf8.count + info.toolVersion.utf8.count + 96
        default: return 128
        }
    }
}
