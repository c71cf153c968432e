import NIOCore
import TapWire

/// A header field as recorded: the octets that travelled (a `-bin` value stays in its wire form, base64 text or
/// 0x00 + raw bytes), or a marker that the value was withheld.
public struct RecordedHeader: Sendable, Hashable {
    public var name: String
    /// Empty when `redacted`.
    public var value: [UInt8]
    /// The value was never stored: `authorization` always, personal metadata with `--record-redact`.
    public var redacted: Bool

    public init(name: String, value: [UInt8], redacted: Bool = false) {
        self.name = name
        self.value = value
        self.redacted = redacted
    }

    /// The value as text (UTF-8, repaired), for display.
    public var text: String { String(decoding: value, as: UTF8.self) }
}

/// The first record of every file: which session and which part of it.
public struct SegmentInfo: Sendable, Equatable {
    /// Random, the same in every file of one recording.
    public var sessionID: [UInt8]
    /// 0 for the first file, then 1, 2, ... (file names `FILE`, `FILE.1`, ...).
    public var index: UInt32
    public var createdTime: UInt64
    public var toolVersion: String
    public var listen: String
    public var upstream: String
    public var maxMessageBytes: UInt64
    public var maxFileBytes: UInt64
    public var maxSidechannelBytes: UInt64
    public var personalMetadataRedacted: Bool

    public init(
        sessionID: [UInt8], index: UInt32, createdTime: UInt64, toolVersion: String, listen: String, upstream: String,
        maxMessageBytes: UInt64, maxFileBytes: UInt64, maxSidechannelBytes: UInt64, personalMetadataRedacted: Bool
    ) {
        self.sessionID = sessionID
        self.index = index
        self.createdTime = createdTime
        self.toolVersion = toolVersion
        self.listen = listen
        self.upstream = upstream
        self.maxMessageBytes = maxMessageBytes
        self.maxFileBytes = maxFileBytes
        self.maxSidechannelBytes = maxSidechannelBytes
        self.personalMetadataRedacted = personalMetadataRedacted
    }
}

/// Notices: something the recorder did not record, or a change of its state.
public enum NoticeKind: UInt8, Sendable {
    /// Free text.
    case info = 0
    /// A sidechannel passed `maxSidechannelBytes`; its further bytes are only counted.
    case sidechannelCut = 1
    /// Recording stopped early (queue full, disk full, write error, file limit); the text says why.
    case recordingStopped = 2
}

/// One decoded record.
public enum SessionRecord: Sendable {
    case segment(SegmentInfo)
    case connectionOpened(connection: UInt64, time: UInt64, transport: String, peer: String)
    case connectionClosed(
        connection: UInt64, time: UInt64, kind: String, bytesToServer: UInt64, bytesToClient: UInt64, reason: String,
        decodingStopped: String?)
    case callStarted(
        call: UInt64, connection: UInt64, time: UInt64, streamID: UInt32, yamuxStreamID: UInt32?, fromGitaly: Bool,
        path: String, headers: [RecordedHeader])
    case responseHeaders(call: UInt64, time: UInt64, headers: [RecordedHeader])
    /// `payload` holds at most the cap; `length` is the message's real length. The payload is the slices of the
    /// forwarded bytes it arrived in, written out without being assembled first.
    case message(
        call: UInt64, time: UInt64, direction: Direction, compressed: Bool, length: UInt32, payload: ByteChain)
    case requestEnded(call: UInt64, time: UInt64)
    case trailers(call: UInt64, time: UInt64, trailersOnly: Bool, headers: [RecordedHeader])
    case callEnded(call: UInt64, time: UInt64, end: GRPCCallRecord.End)
    case sidechannelOpened(sidechannel: UInt64, connection: UInt64, time: UInt64, yamuxStreamID: UInt32, id: Int64)
    case sidechannelData(sidechannel: UInt64, time: UInt64, direction: Direction, payload: ByteBuffer)
    case sidechannelEnded(
        sidechannel: UInt64, time: UInt64, end: SidechannelRecord.End, bytesToServer: UInt64, bytesToClient: UInt64,
        cut: Bool)
    case notice(time: UInt64, kind: NoticeKind, text: String)
    /// The recording continues in `nextFile` (a name in the same directory).
    case segmentEnd(time: UInt64, nextFile: String)
    /// The recorder closed the recording in order.
    case recordingEnded(time: UInt64)
    /// A type this reader does not know (a newer minor version); skipped.
    case unknown(type: UInt8)

    /// The type byte.
    public var type: UInt8 {
        switch self {
        case .segment: RecordType.segment.rawValue
        case .connectionOpened: RecordType.connectionOpened.rawValue
        case .connectionClosed: RecordType.connectionClosed.rawValue
        case .callStarted: RecordType.callStarted.rawValue
        case .responseHeaders: RecordType.responseHeaders.rawValue
        case .message: RecordType.message.rawValue
        case .requestEnded: RecordType.requestEnded.rawValue
        case .trailers: RecordType.trailers.rawValue
        case .callEnded: RecordType.callEnded.rawValue
        case .sidechannelOpened: RecordType.sidechannelOpened.rawValue
        case .sidechannelData: RecordType.sidechannelData.rawValue
        case .sidechannelEnded: RecordType.sidechannelEnded.rawValue
        case .notice: RecordType.notice.rawValue
        case .segmentEnd: RecordType.segmentEnd.rawValue
        case .recordingEnded: RecordType.recordingEnded.rawValue
        case .unknown(let type): type
        }
    }
}

// MARK: - Encoding

/// Where records are encoded: a `ByteBuffer`, or the memory a `RecordingWriter` writes from. Generic so the writer's
/// path is specialised to plain stores, with no per-field bookkeeping of a `ByteBuffer`.
protocol RecordSink {
    /// Bytes written so far (an index for `patch` and `checksum`).
    var position: Int { get }
    /// Appends `value` in network byte order.
    mutating func put<T: FixedWidthInteger>(_ value: T)
    mutating func put(bytes: UnsafeRawBufferPointer)
    /// Overwrites the four bytes at `index` with `value` in network byte order.
    mutating func patch(_ value: UInt32, at index: Int)
    /// CRC-32 of the bytes from `index` to the end.
    func checksum(from index: Int) -> UInt32
}

extension RecordSink {
    mutating func put(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { put(bytes: $0) }
    }

    mutating func put(_ chain: ByteChain) {
        chain.forEachPiece { put(bytes: $0) }
    }

    mutating func put(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { put(bytes: $0) }
    }

    /// A u16 length and UTF-8 bytes (cut at 65535 bytes).
    mutating func putShortString(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            let bytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(utf8).prefix(Int(UInt16.max)))
            put(UInt16(bytes.count))
            put(bytes: bytes)
        }
    }

    /// u16 count, then per field: flags u8 (bit 0 redacted, bit 1 the withheld `authorization`), name (u16 + bytes),
    /// value (u32 + bytes).
    mutating func putHeaders(_ headers: [RecordedHeader]) {
        let count = min(headers.count, Int(UInt16.max))
        put(UInt16(count))
        for header in headers.prefix(count) {
            // The withheld `authorization` is stored as a flag alone, so not even its name is in the file.
            let isAuthorization = header.redacted && header.name.lowercased() == "authorization"
            put(UInt8(header.redacted ? 1 : 0) | (isAuthorization ? 2 : 0))
            putShortString(isAuthorization ? "" : header.name)
            put(UInt32(header.redacted ? 0 : header.value.count))
            if !header.redacted { put(header.value) }
        }
    }
}

extension ByteBuffer: RecordSink {
    var position: Int { writerIndex }

    mutating func put<T: FixedWidthInteger>(_ value: T) { writeInteger(value) }

    mutating func put(bytes: UnsafeRawBufferPointer) { writeBytes(bytes) }

    mutating func patch(_ value: UInt32, at index: Int) { setInteger(value, at: index) }

    func checksum(from index: Int) -> UInt32 {
        withUnsafeReadableBytes { raw in
            CRC32.update(0, UnsafeRawBufferPointer(rebasing: raw[(index - readerIndex)...]))
        }
    }
}

extension SessionRecord {
    /// Appends this record, framed (length, type, body, CRC), to `out`.
    public func encode(into out: inout ByteBuffer) {
        append(to: &out)
    }

    /// Appends this record, framed, to any sink (the recording writer's memory).
    func append<Sink: RecordSink>(to out: inout Sink) {
        let start = out.position
        out.put(UInt32(0))
        out.put(type)
        encodeBody(into: &out)
        out.patch(UInt32(out.position - start - 4), at: start)
        out.put(out.checksum(from: start))
    }

    /// The framed record on its own.
    public var encoded: ByteBuffer {
        var out = ByteBuffer()
        encode(into: &out)
        return out
    }

    private func encodeBody<Sink: RecordSink>(into out: inout Sink) {
        switch self {
        case .segment(let s):
            out.put(s.sessionID.count == 16 ? s.sessionID : [UInt8](repeating: 0, count: 16))
            out.put(s.index)
            out.put(s.createdTime)
            out.putShortString(s.toolVersion)
            out.putShortString(s.listen)
            out.putShortString(s.upstream)
            out.put(s.maxMessageBytes)
            out.put(s.maxFileBytes)
            out.put(s.maxSidechannelBytes)
            out.put(UInt8(s.personalMetadataRedacted ? 1 : 0))
        case .connectionOpened(let connection, let time, let transport, let peer):
            out.put(connection)
            out.put(time)
            out.putShortString(transport)
            out.putShortString(peer)
        case .connectionClosed(let connection, let time, let kind, let toServer, let toClient, let reason, let stopped):
            out.put(connection)
            out.put(time)
            out.putShortString(kind)
            out.put(toServer)
            out.put(toClient)
            out.putShortString(reason)
            out.put(UInt8(stopped == nil ? 0 : 1))
            out.putShortString(stopped ?? "")
        case .callStarted(
            let call, let connection, let time, let streamID, let yamux, let fromGitaly, let path, let headers):
            out.put(call)
            out.put(connection)
            out.put(time)
            out.put(streamID)
            out.put(yamux ?? 0)
            out.put(UInt8((fromGitaly ? 1 : 0) | (yamux != nil ? 2 : 0)))
            out.putShortString(path)
            out.putHeaders(headers)
        case .responseHeaders(let call, let time, let headers):
            out.put(call)
            out.put(time)
            out.putHeaders(headers)
        case .message(let call, let time, let direction, let compressed, let length, let payload):
            out.put(call)
            out.put(time)
            out.put(direction.byte)
            out.put(UInt8(compressed ? 1 : 0))
            out.put(length)
            out.put(payload)
        case .requestEnded(let call, let time):
            out.put(call)
            out.put(time)
        case .trailers(let call, let time, let trailersOnly, let headers):
            out.put(call)
            out.put(time)
            out.put(UInt8(trailersOnly ? 1 : 0))
            out.putHeaders(headers)
        case .callEnded(let call, let time, let end):
            out.put(call)
            out.put(time)
            let (kind, direction, code, text): (UInt8, Direction, UInt32, String) =
                switch end {
                case .trailers: (0, .serverToClient, 0, "")
                case .trailersOnly: (1, .serverToClient, 0, "")
                case .reset(let by, let code): (2, by, code, "")
                case .refusedByGoAway(let code): (3, .serverToClient, code, "")
                case .connectionLost: (4, .serverToClient, 0, "")
                case .decodingStopped(let reason): (5, .serverToClient, 0, reason)
                }
            out.put(kind)
            out.put(direction.byte)
            out.put(code)
            out.putShortString(text)
        case .sidechannelOpened(let sidechannel, let connection, let time, let yamux, let id):
            out.put(sidechannel)
            out.put(connection)
            out.put(time)
            out.put(yamux)
            out.put(id)
        case .sidechannelData(let sidechannel, let time, let direction, let payload):
            out.put(sidechannel)
            out.put(time)
            out.put(direction.byte)
            out.put(payload)
        case .sidechannelEnded(let sidechannel, let time, let end, let toServer, let toClient, let cut):
            out.put(sidechannel)
            out.put(time)
            let (kind, direction): (UInt8, Direction) =
                switch end {
                case .closed: (0, .clientToServer)
                case .reset(let by): (1, by)
                case .connectionLost: (2, .clientToServer)
                }
            out.put(kind)
            out.put(direction.byte)
            out.put(toServer)
            out.put(toClient)
            out.put(UInt8(cut ? 1 : 0))
        case .notice(let time, let kind, let text):
            out.put(time)
            out.put(kind.rawValue)
            out.putShortString(text)
        case .segmentEnd(let time, let nextFile):
            out.put(time)
            out.putShortString(nextFile)
        case .recordingEnded(let time):
            out.put(time)
        case .unknown:
            break
        }
    }
}

// MARK: - Decoding

extension SessionRecord {
    /// Decodes the body of a record of `type` (CRC already checked).
    ///
    /// - Throws: `RecordFormatError` when a known type's body is too short or inconsistent.
    public static func decode(type: UInt8, body: ByteBuffer) throws(RecordFormatError) -> SessionRecord {
        guard let known = RecordType(rawValue: type) else { return .unknown(type: type) }
        var b = BodyReader(buffer: body, type: known)
        switch known {
        case .segment:
            let id = try b.bytes(16)
            return .segment(
                SegmentInfo(
                    sessionID: id, index: try b.u32(), createdTime: try b.u64(), toolVersion: try b.string(),
                    listen: try b.string(), upstream: try b.string(), maxMessageBytes: try b.u64(),
                    maxFileBytes: try b.u64(), maxSidechannelBytes: try b.u64(),
                    personalMetadataRedacted: try b.u8() & 1 == 1))
        case .connectionOpened:
            return .connectionOpened(
                connection: try b.u64(), time: try b.u64(), transport: try b.string(), peer: try b.string())
        case .connectionClosed:
            let connection = try b.u64(), time = try b.u64(), kind = try b.string()
            let toServer = try b.u64(), toClient = try b.u64(), reason = try b.string()
            let hasStop = try b.u8() == 1
            let stopped = try b.string()
            return .connectionClosed(
                connection: connection, time: time, kind: kind, bytesToServer: toServer, bytesToClient: toClient,
                reason: reason, decodingStopped: hasStop ? stopped : nil)
        case .callStarted:
            let call = try b.u64(), connection = try b.u64(), time = try b.u64(), stream = try b.u32()
            let yamux = try b.u32(), flags = try b.u8()
            return .callStarted(
                call: call, connection: connection, time: time, streamID: stream,
                yamuxStreamID: flags & 2 != 0 ? yamux : nil, fromGitaly: flags & 1 != 0, path: try b.string(),
                headers: try b.headers())
        case .responseHeaders:
            return .responseHeaders(call: try b.u64(), time: try b.u64(), headers: try b.headers())
        case .message:
            let call = try b.u64(), time = try b.u64(), direction = try b.direction(), flags = try b.u8()
            let length = try b.u32()
            let payload = b.rest()
            guard payload.readableBytes <= Int(length) else {
                throw RecordFormatError(
                    "message record holds \(payload.readableBytes) bytes of a \(length)-byte message")
            }
            return .message(
                call: call, time: time, direction: direction, compressed: flags & 1 != 0, length: length,
                payload: ByteChain(payload))
        case .requestEnded:
            return .requestEnded(call: try b.u64(), time: try b.u64())
        case .trailers:
            return .trailers(
                call: try b.u64(), time: try b.u64(), trailersOnly: try b.u8() == 1, headers: try b.headers())
        case .callEnded:
            let call = try b.u64(), time = try b.u64(), kind = try b.u8(), direction = try b.direction()
            let code = try b.u32(), text = try b.string()
            let end: GRPCCallRecord.End
            switch kind {
            case 0: end = .trailers
            case 1: end = .trailersOnly
            case 2: end = .reset(by: direction, code: code)
            case 3: end = .refusedByGoAway(code: code)
            case 4: end = .connectionLost
            case 5: end = .decodingStopped(text)
            default: throw RecordFormatError("call end kind \(kind) is unknown")
            }
            return .callEnded(call: call, time: time, end: end)
        case .sidechannelOpened:
            return .sidechannelOpened(
                sidechannel: try b.u64(), connection: try b.u64(), time: try b.u64(), yamuxStreamID: try b.u32(),
                id: Int64(bitPattern: try b.u64()))
        case .sidechannelData:
            return .sidechannelData(
                sidechannel: try b.u64(), time: try b.u64(), direction: try b.direction(), payload: b.rest())
        case .sidechannelEnded:
            let sidechannel = try b.u64(), time = try b.u64(), kind = try b.u8(), direction = try b.direction()
            let toServer = try b.u64(), toClient = try b.u64(), cut = try b.u8() == 1
            let end: SidechannelRecord.End
            switch kind {
            case 0: end = .closed
            case 1: end = .reset(by: direction)
            case 2: end = .connectionLost
            default: throw RecordFormatError("sidechannel end kind \(kind) is unknown")
            }
            return .sidechannelEnded(
                sidechannel: sidechannel, time: time, end: end, bytesToServer: toServer, bytesToClient: toClient,
                cut: cut)
        case .notice:
            let time = try b.u64(), kind = try b.u8()
            return .notice(time: time, kind: NoticeKind(rawValue: kind) ?? .info, text: try b.string())
        case .segmentEnd:
            return .segmentEnd(time: try b.u64(), nextFile: try b.string())
        case .recordingEnded:
            return .recordingEnded(time: try b.u64())
        }
    }
}

/// Reads the fields of one record body; running out is a format error naming the record type.
private struct BodyReader {
    var buffer: ByteBuffer
    let type: RecordType

    private func short() -> RecordFormatError { RecordFormatError("\(type) record is shorter than its fields") }

    mutating func u8() throws(RecordFormatError) -> UInt8 {
        guard let v = buffer.readInteger(as: UInt8.self) else { throw short() }
        return v
    }
    mutating func u32() throws(RecordFormatError) -> UInt32 {
        guard let v = buffer.readInteger(as: UInt32.self) else { throw short() }
        return v
    }
    mutating func u64() throws(RecordFormatError) -> UInt64 {
        guard let v = buffer.readInteger(as: UInt64.self) else { throw short() }
        return v
    }
    mutating func bytes(_ n: Int) throws(RecordFormatError) -> [UInt8] {
        guard let v = buffer.readBytes(length: n) else { throw short() }
        return v
    }
    mutating func string() throws(RecordFormatError) -> String {
        guard let n = buffer.readInteger(as: UInt16.self), let s = buffer.readString(length: Int(n)) else {
            throw short()
        }
        return s
    }
    mutating func direction() throws(RecordFormatError) -> Direction {
        switch try u8() {
        case 0: return .clientToServer
        case 1: return .serverToClient
        case let other: throw RecordFormatError("\(type) record has direction \(other)")
        }
    }
    mutating func headers() throws(RecordFormatError) -> [RecordedHeader] {
        guard let count = buffer.readInteger(as: UInt16.self) else { throw short() }
        var headers: [RecordedHeader] = []
        headers.reserveCapacity(Int(count))
        for _ in 0..<count {
            let flags = try u8()
            let stored = try string()
            let name = flags & 2 != 0 ? "authorization" : stored
            guard let n = buffer.readInteger(as: UInt32.self), let value = buffer.readBytes(length: Int(n)) else {
                throw short()
            }
            headers.append(RecordedHeader(name: name, value: value, redacted: flags & 1 != 0))
        }
        return headers
    }
    mutating func rest() -> ByteBuffer {
        buffer.readSlice(length: buffer.readableBytes)!
    }
}

extension Direction {
    /// 0 client → server, 1 server → client.
    var byte: UInt8 { self == .clientToServer ? 0 : 1 }
}
