import NIOCore
import NIOHPACK
import NIOHTTP2
import TapRecord
import TapWire

/// One side of a gRPC call as received on an HTTP/2 stream that the tap itself speaks (replay client, stand-in).
struct CollectedStream: Sendable {
    /// The first HEADERS (request headers on a server, response headers on a client), unless it ended the stream.
    var headers: HPACKHeaders?
    /// The HEADERS that ended the stream (a client's trailers, including Trailers-Only).
    var trailers: HPACKHeaders?
    var messages: [ByteBuffer] = []
    /// The peer reset the stream with this code.
    var reset: NIOHTTP2.HTTP2ErrorCode?
    /// The stream closed before the peer ended it.
    var lost = false
    /// We reset the stream (imitating a recorded client's cancellation).
    var resetByClient = false
    /// The peer sent bytes that are not gRPC messages.
    var malformed: String?

    /// `grpc-status` of the trailers.
    var status: Int? { trailers?.first(name: "grpc-status").flatMap { Int($0) } }
    /// `grpc-message`, percent-decoded.
    var statusMessage: String { trailers?.first(name: "grpc-message").map(PercentDecoding.decode) ?? "" }
}

/// Collects the frames of one stream into a `CollectedStream`: header blocks, whole gRPC messages, the end.
struct GRPCStreamCollector {
    private(set) var collected = CollectedStream()
    private var framer = GRPCMessageFramer()
    private(set) var ended = false

    /// Takes one inbound frame; true when the peer ended the stream with it.
    mutating func receive(_ payload: HTTP2Frame.FramePayload) -> Bool {
        guard !ended else { return false }
        switch payload {
        case .headers(let h):
            if collected.headers == nil, !h.endStream || h.headers.first(name: "grpc-status") == nil {
                collected.headers = h.headers
            } else {
                collected.trailers = h.headers
            }
            if h.endStream { ended = true }
        case .data(let d):
            if case .byteBuffer(let buffer) = d.data {
                framer.feed(buffer, captureLimit: { _ in Int.max }) { message in
                    collected.messages.append(message.captured ?? ByteBuffer())
                }
            }
            if d.endStream {
                if !framer.isAtMessageBoundary { collected.malformed = "the stream ended inside a gRPC message" }
                ended = true
            }
        case .rstStream(let code):
            collected.reset = code
            ended = true
        default:
            break
        }
        return ended
    }

    /// We reset the stream; true when it had not ended before.
    mutating func resetByClient() -> Bool {
        guard !ended else { return false }
        ended = true
        collected.resetByClient = true
        return true
    }

    /// The stream closed; true when it had not ended before.
    mutating func close() -> Bool {
        guard !ended else { return false }
        ended = true
        collected.lost = true
        return true
    }
}

extension RecordedHeader {
    /// The value to send again: a `-bin` value recorded in gRPC's "true binary" form (0x00, then raw bytes) is
    /// sent base64-encoded, the form every gRPC peer decodes to the same bytes; HPACK text values as recorded.
    var wireValue: String {
        if name.hasSuffix("-bin"), value.first == 0 { return Base64.encode(value.dropFirst()) }
        return String(decoding: value, as: UTF8.self)
    }
}

extension HPACKHeaders {
    /// Headers in HTTP/2 order: pseudo-headers first.
    init(pseudo: [(String, String)], regular: [(String, String)]) {
        self.init()
        for (name, value) in pseudo { add(name: name, value: value) }
        for (name, value) in regular { add(name: name, value: value) }
    }
}

/// HTTP/2 settings for the tap's own gRPC endpoints: large windows (a 16 MiB answer should not crawl through
/// 64 KiB windows), many streams, and tolerance for gRPC-Go's RST_STREAM(NO_ERROR) after trailers.
enum GRPCHTTP2Settings {
    static let window = 16 << 20

    static var connection: NIOHTTP2Handler.ConnectionConfiguration {
        var c = NIOHTTP2Handler.ConnectionConfiguration()
        c.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 1000),
            HTTP2Setting(parameter: .initialWindowSize, value: window),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 1 << 20),
        ]
        c.maximumRecentlyResetStreams = 10_000
        return c
    }

    static var stream: NIOHTTP2Handler.StreamConfiguration {
        var s = NIOHTTP2Handler.StreamConfiguration()
        s.targetWindowSize = window
        s.outboundBufferSizeHighWatermark = 1 << 20
        s.outboundBufferSizeLowWatermark = 256 << 10
        s.streamResetFrameRateLimit.maximumCount = 100_000
        s.streamErrorRateLimit.maximumCount = 100_000
        return s
    }

    /// The 5-byte gRPC prefix and `payload`.
    static func framed(_ payload: ByteBuffer, compressed: Bool = false) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(5 + payload.readableBytes)
        out.writeInteger(UInt8(compressed ? 1 : 0))
        out.writeInteger(UInt32(payload.readableBytes))
        out.writeImmutableBuffer(payload)
        return out
    }
}
