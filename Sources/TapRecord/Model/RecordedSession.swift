import NIOCore
import TapWire

/// One message of a recorded call.
public struct RecordedMessage: Sendable {
    public var time: UInt64
    public var compressed: Bool
    /// The message's real length.
    public var length: Int
    /// The stored bytes: all of them unless the message passed the recording's cap.
    public var payload: ByteBuffer

    /// Bytes the recording holds (the payload's size, also when it was not loaded).
    public var storedLength: Int

    public init(time: UInt64, compressed: Bool, length: Int, payload: ByteBuffer, storedLength: Int? = nil) {
        self.time = time
        self.compressed = compressed
        self.length = length
        self.payload = payload
        self.storedLength = storedLength ?? payload.readableBytes
    }

    /// True when the recording kept only the first bytes.
    public var truncated: Bool { storedLength < length }
    /// The stored bytes as an array.
    public var bytes: [UInt8] { Array(payload.readableBytesView) }
}

/// One gRPC call as recorded, request and answer.
public struct RecordedCall: Sendable {
    public var id: UInt64
    public var connection: UInt64
    /// `/package.Service/Method`.
    public var path: String
    public var startTime: UInt64
    public var endTime: UInt64?
    public var requestEndTime: UInt64?
    public var fromGitaly: Bool
    /// Request headers with pseudo-headers; withheld values are marked.
    public var requestHeaders: [RecordedHeader]
    public var responseHeaders: [RecordedHeader]?
    public var requests: [RecordedMessage] = []
    public var responses: [RecordedMessage] = []
    public var trailers: [RecordedHeader]?
    public var trailersOnly = false
    public var end: GRPCCallRecord.End?

    public init(
        id: UInt64, connection: UInt64, path: String, startTime: UInt64, fromGitaly: Bool,
        requestHeaders: [RecordedHeader]
    ) {
        self.id = id
        self.connection = connection
        self.path = path
        self.startTime = startTime
        self.fromGitaly = fromGitaly
        self.requestHeaders = requestHeaders
    }

    /// The gRPC status code from the trailers; nil when the call ended without one (reset, connection lost).
    public var statusCode: Int? {
        trailers?.first { $0.name == "grpc-status" }.flatMap { Int($0.text) }
    }

    /// The status message, percent-decoded.
    public var statusMessage: String {
        trailers?.first { $0.name == "grpc-message" }.map { PercentDecoding.decode($0.text) } ?? ""
    }

    /// The status as a name (`OK`, `NOT_FOUND`, ...), or how the call ended without one.
    public var statusName: String {
        if let code = statusCode { return GRPCStatusName.name(code) }
        switch end {
        case .reset(let by, let code)?: return "RESET(\(code)) by \(by == .clientToServer ? "client" : "server")"
        case .refusedByGoAway?: return "REFUSED_BY_GOAWAY"
        case .connectionLost?: return "CONNECTION_LOST"
        case .decodingStopped?: return "DECODING_STOPPED"
        case nil: return "UNFINISHED"
        default: return "NO_STATUS"
        }
    }

    /// Duration from request headers to the end, in nanoseconds.
    public var duration: UInt64? { endTime.map { $0 >= startTime ? $0 - startTime : 0 } }

    /// The first value of request metadata `name`.
    public func requestHeader(_ name: String) -> RecordedHeader? { requestHeaders.first { $0.name == name } }

    /// True when every request message was stored whole, so the call can be sent again as it was.
    public var requestComplete: Bool { !requests.contains { $0.truncated } && requestEndTime != nil }
}

/// One sidechannel as recorded.
public struct RecordedSidechannel: Sendable {
    public var id: UInt64
    public var connection: UInt64
    public var sidechannelID: Int64
    public var openTime: UInt64
    public var endTime: UInt64?
    public var bytesToServer: UInt64 = 0
    public var bytesToClient: UInt64 = 0
    public var storedToServer: UInt64 = 0
    public var storedToClient: UInt64 = 0
    public var cut = false
}

/// A whole recording in memory: calls with their messages, sidechannels, notices, and how its files ended.
public struct RecordedSession: Sendable {
    public var segments: [SegmentInfo] = []
    public var calls: [RecordedCall] = []
    public var sidechannels: [RecordedSidechannel] = []
    public var connections: [UInt64: (opened: UInt64?, closed: UInt64?)] = [:]
    public var notices: [(time: UInt64, kind: NoticeKind, text: String)] = []
    public var tails: [(file: String, tail: RecordTail)] = []
    public var endedInOrder = false
    /// Records of types this reader does not know (newer format), skipped.
    public var unknownRecords = 0

    private var index: [UInt64: Int] = [:]
    private var sidechannelIndex: [UInt64: Int] = [:]
    private var keepPayloads = true

    public init() {}

    /// Reads the recording starting at `path` (following its later files), one record at a time.
    ///
    /// - Parameter keepPayloads: false keeps message lengths but not their bytes (summaries of large recordings).
    /// - Throws: `RecordFormatError` when it cannot be read at all.
    public static func load(path: String, keepPayloads: Bool = true) throws(RecordFormatError) -> RecordedSession {
        var session = RecordedSession()
        session.keepPayloads = keepPayloads
        session.tails = try RecordingReader.forEachRecord(path: path) { session.add($0) }
        return session
    }

    /// Assembles `records` (in file order).
    public init(records: [SessionRecord]) {
        for record in records { add(record) }
    }

    /// Adds the next record in file order.
    public mutating func add(_ record: SessionRecord) {
        switch record {
        case .segment(let info): segments.append(info)
        case .connectionOpened(let c, let t, _, _): connections[c, default: (nil, nil)].opened = t
        case .connectionClosed(let c, let t, _, _, _, _, _): connections[c, default: (nil, nil)].closed = t
        case .callStarted(let id, let connection, let time, _, _, let fromGitaly, let path, let headers):
            index[id] = calls.count
            calls.append(
                RecordedCall(
                    id: id, connection: connection, path: path, startTime: time, fromGitaly: fromGitaly,
                    requestHeaders: headers))
        case .responseHeaders(let id, _, let headers):
            if let i = index[id] { calls[i].responseHeaders = headers }
        case .message(let id, let time, let direction, let compressed, let length, let payload):
            guard let i = index[id] else { return }
            let message = RecordedMessage(
                time: time, compressed: compressed, length: Int(length), payload: keepPayloads ? payload.joined : ByteBuffer(),
                storedLength: payload.count)
            if direction == .clientToServer {
                calls[i].requests.append(message)
            } else {
                calls[i].responses.append(message)
            }
        case .requestEnded(let id, let time):
            if let i = index[id] { calls[i].requestEndTime = time }
        case .trailers(let id, _, let only, let headers):
            if let i = index[id] {
                calls[i].trailers = headers
                calls[i].trailersOnly = only
            }
        case .callEnded(let id, let time, let end):
            if let i = index[id] {
                calls[i].endTime = time
                calls[i].end = end
            }
        case .sidechannelOpened(let id, let connection, let time, _, let scID):
            sidechannelIndex[id] = sidechannels.count
            sidechannels.append(
                RecordedSidechannel(id: id, connection: connection, sidechannelID: scID, openTime: time))
        case .sidechannelData(let id, _, let direction, let payload):
            guard let i = sidechannelIndex[id] else { return }
            if direction == .clientToServer {
                sidechannels[i].storedToServer += UInt64(payload.readableBytes)
            } else {
                sidechannels[i].storedToClient += UInt64(payload.readableBytes)
            }
        case .sidechannelEnded(let id, let time, _, let toServer, let toClient, let cut):
            guard let i = sidechannelIndex[id] else { return }
            sidechannels[i].endTime = time
            sidechannels[i].bytesToServer = toServer
            sidechannels[i].bytesToClient = toClient
            sidechannels[i].cut = cut
        case .notice(let time, let kind, let text): notices.append((time, kind, text))
        case .segmentEnd: break
        case .recordingEnded: endedInOrder = true
        case .unknown: unknownRecords += 1
        }
    }
}

/// gRPC status code names (grpc/grpc `doc/statuscodes.md`).
public enum GRPCStatusName {
    static let names = [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
        "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ]

    /// `OK`, `NOT_FOUND`, ... or `CODE_<n>` for codes outside the table.
    public static func name(_ code: Int) -> String {
        names.indices.contains(code) ? names[code] : "CODE_\(code)"
    }
}
