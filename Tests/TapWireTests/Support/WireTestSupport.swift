import Foundation
import NIOCore
import NIOHPACK
import TapWire
import Testing

// MARK: - Fixtures captured from real grpcio traffic

/// One HTTP/2 connection captured with `socat -r/-R` between a real grpcio client and server
/// (regenerate with `Fixtures/capture.py`).
struct WireFixture: Sendable, CustomStringConvertible {
    let name: String
    let clientToServer: [UInt8]
    let serverToClient: [UInt8]

    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    static let names = [
        "unary", "error", "trailers_only", "cancel", "metadata", "server_stream_small", "bidi_small",
        "client_stream_small", "several_calls",
    ]

    static func load(_ name: String) throws -> WireFixture {
        func read(_ suffix: String) throws -> [UInt8] {
            let url = directory.appendingPathComponent("\(name).\(suffix).bin")
            return [UInt8](try Data(contentsOf: url))
        }
        return WireFixture(name: name, clientToServer: try read("c2s"), serverToClient: try read("s2c"))
    }

    static func all() throws -> [WireFixture] { try names.map(load) }

    var description: String { name }

    /// The capture keeps each direction whole but loses how the two interleaved. This order is causal for every
    /// fixture: the client's bytes up to its first RST_STREAM (a cancel comes after the reply that caused it), then
    /// everything the server sent, then the rest of the client's bytes.
    var timeline: [Chunk] {
        let cut =
            Self.offsetOfFirstFrame(ofType: 0x3, in: clientToServer, skippingPreface: true) ?? clientToServer.count
        var chunks = [Chunk(direction: .clientToServer, bytes: Array(clientToServer[..<cut]), time: 1)]
        chunks.append(Chunk(direction: .serverToClient, bytes: serverToClient, time: 2))
        if cut < clientToServer.count {
            chunks.append(Chunk(direction: .clientToServer, bytes: Array(clientToServer[cut...]), time: 3))
        }
        return chunks
    }

    var totalBytes: Int { clientToServer.count + serverToClient.count }

    /// Byte offset of the first frame of `type`, walking frame headers.
    static func offsetOfFirstFrame(ofType type: UInt8, in bytes: [UInt8], skippingPreface: Bool) -> Int? {
        var i = skippingPreface ? HTTP2Preface.bytes.count : 0
        while i + 9 <= bytes.count {
            let length = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            if bytes[i + 3] == type { return i }
            i += 9 + length
        }
        return nil
    }

    /// Offsets of every frame start in `bytes`.
    static func frameOffsets(in bytes: [UInt8], skippingPreface: Bool) -> [Int] {
        var offsets: [Int] = []
        var i = skippingPreface ? HTTP2Preface.bytes.count : 0
        while i + 9 <= bytes.count {
            offsets.append(i)
            i += 9 + (Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2]))
        }
        return offsets
    }
}

/// Bytes that travelled in one direction, stamped with the time they are fed at.
struct Chunk: Sendable {
    var direction: Direction
    var bytes: [UInt8]
    var time: UInt64
}

// MARK: - Feeding

/// Splits a timeline at the given global byte offsets (a chunk boundary is always a split).
func pieces(of timeline: [Chunk], cutAt cuts: [Int]) -> [Chunk] {
    var result: [Chunk] = []
    var cuts = cuts.sorted()[...]
    var base = 0
    for chunk in timeline {
        var start = 0
        while let cut = cuts.first, cut - base <= chunk.bytes.count {
            cuts.removeFirst()
            let local = cut - base
            guard local > start else { continue }
            result.append(Chunk(direction: chunk.direction, bytes: Array(chunk.bytes[start..<local]), time: chunk.time))
            start = local
        }
        if start < chunk.bytes.count {
            result.append(Chunk(direction: chunk.direction, bytes: Array(chunk.bytes[start...]), time: chunk.time))
        }
        base += chunk.bytes.count
    }
    return result
}

/// What a `ConnectionDecoder` made of a sequence of chunks.
struct ConnectionOutcome {
    var records: [GRPCCallRecord] = []
    var decoder: ConnectionDecoder
}

/// Feeds `chunks` into a fresh `ConnectionDecoder`, then closes it when `close` is set.
func decodeConnection(
    _ chunks: [Chunk], limits: GRPCCallAssembler.Limits = .init(), close closeTime: UInt64? = nil
) -> ConnectionOutcome {
    var decoder = ConnectionDecoder(limits: limits)
    var records: [GRPCCallRecord] = []
    for chunk in chunks {
        decoder.feed(ByteBuffer(bytes: chunk.bytes), direction: chunk.direction, at: chunk.time) { records.append($0) }
    }
    if let closeTime {
        decoder.close(at: closeTime) { records.append($0) }
    }
    return ConnectionOutcome(records: records, decoder: decoder)
}

/// What an `HTTP2SessionDecoder` made of a sequence of chunks.
struct SessionOutcome {
    var records: [GRPCCallRecord] = []
    var error: WireDecodingError?
    var decoder: HTTP2SessionDecoder
}

/// Feeds `chunks` into `decoder` until the first error.
func decodeSession(_ chunks: [Chunk], decoder: HTTP2SessionDecoder = HTTP2SessionDecoder()) -> SessionOutcome {
    var outcome = SessionOutcome(decoder: decoder)
    for chunk in chunks {
        do {
            try outcome.decoder.feed(ByteBuffer(bytes: chunk.bytes), direction: chunk.direction, at: chunk.time) {
                outcome.records.append($0)
            }
        } catch let error as WireDecodingError {
            outcome.error = error
            break
        } catch {
            Issue.record("unexpected error type: \(error)")
            break
        }
    }
    return outcome
}

// MARK: - Comparable view of a record

/// The fields of a `GRPCCallRecord` that must not depend on how the bytes were split.
struct RecordSummary: Hashable, CustomStringConvertible {
    var streamID: UInt32
    var path: String
    var authority: String?
    var method: String?
    var contentType: String?
    var requestMetadata: [HeaderField]
    var hadAuthorization: Bool
    var timeoutNanos: Int64?
    var requestEncoding: String?
    var httpStatus: Int?
    var responseMetadata: [HeaderField]
    var trailers: [HeaderField]
    var grpcStatus: Int?
    var grpcMessage: String?
    var requestMessages: Int
    var requestBytes: Int
    var requestWireBytes: Int
    var responseMessages: Int
    var responseBytes: Int
    var responseWireBytes: Int
    var firstRequestMessage: [UInt8]?
    var firstRequestMessageCompressed: Bool
    var firstRequestMessageLength: Int
    var startTime: UInt64
    var requestEndTime: UInt64?
    var firstResponseTime: UInt64?
    var endTime: UInt64
    var end: GRPCCallRecord.End

    init(_ r: GRPCCallRecord) {
        streamID = r.streamID
        path = r.path
        authority = r.authority
        method = r.method
        contentType = r.contentType
        requestMetadata = r.requestMetadata
        hadAuthorization = r.hadAuthorization
        timeoutNanos = r.timeoutNanos
        requestEncoding = r.requestEncoding
        httpStatus = r.httpStatus
        responseMetadata = r.responseMetadata
        trailers = r.trailers
        grpcStatus = r.grpcStatus
        grpcMessage = r.grpcMessage
        requestMessages = r.requestMessages
        requestBytes = r.requestBytes
        requestWireBytes = r.requestWireBytes
        responseMessages = r.responseMessages
        responseBytes = r.responseBytes
        responseWireBytes = r.responseWireBytes
        firstRequestMessage = r.firstRequestMessage.map { Array($0.readableBytesView) }
        firstRequestMessageCompressed = r.firstRequestMessageCompressed
        firstRequestMessageLength = r.firstRequestMessageLength
        startTime = r.startTime
        requestEndTime = r.requestEndTime
        firstResponseTime = r.firstResponseTime
        endTime = r.endTime
        end = r.end
    }

    var description: String { "stream \(streamID) \(path) \(end) status \(grpcStatus.map(String.init) ?? "-")" }
}

extension Array where Element == GRPCCallRecord {
    var summaries: [RecordSummary] { map(RecordSummary.init) }
}

extension Array where Element == HeaderField {
    func value(_ name: String) -> String? { first { $0.name == name }?.value }
    var names: [String] { map(\.name) }
}

// MARK: - Building frames by hand

/// Writes HTTP/2 frames and HPACK blocks the way a peer would, for synthetic sessions.
enum Frames {
    static let preface = HTTP2Preface.bytes

    static func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
        frame(type: type, flags: flags, stream: stream, length: payload.count) + payload
    }

    /// A frame whose header announces `length` whatever the payload (for malformed frames).
    static func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32, length: Int) -> [UInt8] {
        [
            UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 8),
            UInt8(truncatingIfNeeded: length), type, flags,
            UInt8(truncatingIfNeeded: stream >> 24), UInt8(truncatingIfNeeded: stream >> 16),
            UInt8(truncatingIfNeeded: stream >> 8), UInt8(truncatingIfNeeded: stream),
        ]
    }

    static let endStream: UInt8 = 0x1
    static let ack: UInt8 = 0x1
    static let endHeaders: UInt8 = 0x4
    static let padded: UInt8 = 0x8
    static let priority: UInt8 = 0x20

    static func settings(_ values: [(UInt16, UInt32)] = []) -> [UInt8] {
        var payload: [UInt8] = []
        for (id, value) in values {
            payload += be16(id) + be32(value)
        }
        return frame(type: 0x4, stream: 0, payload)
    }

    static func settingsAck() -> [UInt8] { frame(type: 0x4, flags: ack, stream: 0) }
    static func ping(ack isAck: Bool = false) -> [UInt8] {
        frame(type: 0x6, flags: isAck ? ack : 0, stream: 0, [1, 2, 3, 4, 5, 6, 7, 8])
    }
    static func windowUpdate(stream: UInt32, _ increment: UInt32 = 65535) -> [UInt8] {
        frame(type: 0x8, stream: stream, be32(increment))
    }
    static func rstStream(stream: UInt32, code: UInt32) -> [UInt8] { frame(type: 0x3, stream: stream, be32(code)) }
    static func goAway(lastStream: UInt32, code: UInt32, debug: String = "") -> [UInt8] {
        frame(type: 0x7, stream: 0, be32(lastStream) + be32(code) + Array(debug.utf8))
    }

    static func headers(stream: UInt32, block: [UInt8], endStream end: Bool = false, endHeaders eh: Bool = true)
        -> [UInt8]
    {
        frame(type: 0x1, flags: (end ? endStream : 0) | (eh ? endHeaders : 0), stream: stream, block)
    }

    static func continuation(stream: UInt32, _ fragment: [UInt8], endHeaders eh: Bool) -> [UInt8] {
        frame(type: 0x9, flags: eh ? endHeaders : 0, stream: stream, fragment)
    }

    static func data(stream: UInt32, _ content: [UInt8], endStream end: Bool = false) -> [UInt8] {
        frame(type: 0x0, flags: end ? endStream : 0, stream: stream, content)
    }

    /// A gRPC length-prefixed message.
    static func message(_ payload: [UInt8], compressed: Bool = false) -> [UInt8] {
        [compressed ? 1 : 0] + be32(UInt32(payload.count)) + payload
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(truncatingIfNeeded: v)] }
    static func be32(_ v: UInt32) -> [UInt8] {
        [
            UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8),
            UInt8(truncatingIfNeeded: v),
        ]
    }
}

/// One peer's HPACK encoder, so header blocks of consecutive calls share a dynamic table as on a real connection.
struct BlockEncoder {
    var encoder = HPACKEncoder(allocator: ByteBufferAllocator(), useHuffmanEncoding: true)

    mutating func encode(_ headers: [(String, String)]) -> [UInt8] {
        var buffer = ByteBuffer()
        try! encoder.encode(headers: HPACKHeaders(headers), to: &buffer)
        return Array(buffer.readableBytesView)
    }

    static func request(
        path: String = "/gitaly.RepositoryService/RepositoryExists", extra: [(String, String)] = []
    ) -> [(String, String)] {
        [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "gitaly.test"),
            ("content-type", "application/grpc"), ("te", "trailers"),
            ("x-gitlab-correlation-id", "01JCORRELATION"), ("authorization", "Bearer secret-token"),
        ] + extra
    }

    static let responseHeaders: [(String, String)] = [(":status", "200"), ("content-type", "application/grpc")]

    static func trailers(status: Int, message: String? = nil) -> [(String, String)] {
        [("grpc-status", String(status))] + (message.map { [("grpc-message", $0)] } ?? [])
    }
}

/// A scripted HTTP/2 session: both peers' encoders and the bytes each sent, in order.
struct SyntheticSession {
    var client = BlockEncoder()
    var server = BlockEncoder()
    var chunks: [Chunk] = []
    var time: UInt64 = 100

    init(preface: Bool = true) {
        if preface { send(.clientToServer, Frames.preface + Frames.settings()) }
        send(.serverToClient, Frames.settings())
    }

    mutating func send(_ direction: Direction, _ bytes: [UInt8]) {
        chunks.append(Chunk(direction: direction, bytes: bytes, time: time))
        time += 1
    }

    /// A request HEADERS (plus `messages` in one DATA frame ending the stream when `endRequest`).
    mutating func request(
        stream: UInt32, path: String = "/gitaly.RepositoryService/RepositoryExists", extra: [(String, String)] = [],
        messages: [[UInt8]] = [], endRequest: Bool = true
    ) {
        let block = client.encode(BlockEncoder.request(path: path, extra: extra))
        if messages.isEmpty {
            send(.clientToServer, Frames.headers(stream: stream, block: block, endStream: endRequest))
        } else {
            send(.clientToServer, Frames.headers(stream: stream, block: block))
            send(
                .clientToServer,
                Frames.data(stream: stream, messages.flatMap { Frames.message($0) }, endStream: endRequest))
        }
    }

    /// Response headers, messages in one DATA frame, trailers.
    mutating func response(stream: UInt32, messages: [[UInt8]] = [], status: Int = 0, message: String? = nil) {
        send(.serverToClient, Frames.headers(stream: stream, block: server.encode(BlockEncoder.responseHeaders)))
        if !messages.isEmpty {
            send(.serverToClient, Frames.data(stream: stream, messages.flatMap { Frames.message($0) }))
        }
        send(
            .serverToClient,
            Frames.headers(
                stream: stream, block: server.encode(BlockEncoder.trailers(status: status, message: message)),
                endStream: true))
    }

    /// Every chunk concatenated per direction, fed as one buffer each (client first).
    var wholeStreams: [Chunk] {
        let c2s = chunks.filter { $0.direction == .clientToServer }.flatMap(\.bytes)
        let s2c = chunks.filter { $0.direction == .serverToClient }.flatMap(\.bytes)
        return [
            Chunk(direction: .clientToServer, bytes: c2s, time: 1),
            Chunk(direction: .serverToClient, bytes: s2c, time: 2),
        ]
    }
}

// MARK: - Deterministic randomness

/// SplitMix64: a small seeded generator so random tests replay exactly.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
