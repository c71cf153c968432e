import NIOCore
import NIOHPACK

/// Turns the HTTP/2 events of one session into finished gRPC calls.
///
/// "Client" here is the side that opens streams (odd ids) in this HTTP/2 session; for a backchannel's reverse
/// session that is Gitaly. Streams the server opens (PUSH_PROMISE) are not calls and are ignored.
public struct GRPCCallAssembler: Sendable {
    /// Limits that keep the decoder's memory bounded whatever the peers send.
    public struct Limits: Sendable {
        /// Calls tracked at once; beyond it the decoder stops (a peer allows far fewer).
        public var maxOpenCalls = 4096
        /// Bytes of the first request message kept for attribute extraction.
        public var firstMessageCapture = 64 * 1024
        /// Bytes of every message kept when `keepMessages` is on (recording).
        public var messageCapture = 0
        public var keepMessages = false

        public init() {}
    }

    private struct OpenCall: Sendable {
        var record: GRPCCallRecord
        var requestFramer = GRPCMessageFramer()
        var responseFramer = GRPCMessageFramer()
        var sawResponseHeaders = false
    }

    private var calls: [UInt32: OpenCall] = [:]
    public var limits: Limits
    /// Highest stream id and code of the server's GOAWAY; streams above it are refused.
    private var goAway: (lastStream: UInt32, code: UInt32)?

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Number of calls in flight.
    public var openCalls: Int { calls.count }

    /// A complete header block arrived on `streamID` travelling in `direction`.
    public mutating func headers(
        _ headers: HPACKHeaders,
        streamID: UInt32,
        direction: Direction,
        endStream: Bool,
        at time: UInt64,
        emit: (GRPCCallRecord) -> Void
    ) throws {
        switch direction {
        case .clientToServer:
            if var call = calls[streamID] {
                // Request trailers: gRPC clients do not send them, but HTTP/2 allows it.
                if endStream {
                    call.record.requestEndTime = time
                    calls[streamID] = call
                }
                return
            }
            guard streamID & 1 == 1 else { return }
            guard calls.count < limits.maxOpenCalls else {
                throw WireDecodingError("more than \(limits.maxOpenCalls) calls open at once")
            }
            var record = GRPCCallRecord(streamID: streamID, path: headers.first(name: ":path") ?? "", startTime: time)
            for (rawName, value, _) in headers {
                // HTTP/2 requires lower-case names, but a peer may send otherwise; never let a secret slip by case.
                let name = rawName.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? rawName.lowercased() : rawName
                switch name {
                case ":path", ":scheme": continue
                case ":authority": record.authority = value
                case ":method": record.method = value
                case "content-type": record.contentType = value
                case "authorization", "proxy-authorization":
                    record.hadAuthorization = true
                case "grpc-timeout":
                    record.timeoutNanos = GRPCTimeout.nanoseconds(value)
                    record.requestMetadata.append(HeaderField(name: name, value: value))
                case "grpc-encoding":
                    record.requestEncoding = value
                    record.requestMetadata.append(HeaderField(name: name, value: value))
                default:
                    if name.hasPrefix(":") { continue }
                    record.requestMetadata.append(HeaderField(name: name, value: value))
                }
            }
            if endStream { record.requestEndTime = time }
            var call = OpenCall(record: record)
            if let goAway, streamID > goAway.lastStream {
                // Sent before the client read the server's GOAWAY: the server will not process it.
                finish(&call, end: .refusedByGoAway(code: goAway.code), at: time, emit: emit)
                return
            }
            calls[streamID] = call
        case .serverToClient:
            guard var call = calls[streamID] else { return }
            if call.record.firstResponseTime == nil { call.record.firstResponseTime = time }
            if !call.sawResponseHeaders {
                call.sawResponseHeaders = true
                if let status = headers.first(name: ":status") { call.record.httpStatus = Int(status) }
                let fields = Self.metadata(headers)
                if endStream {
                    call.record.trailers = fields
                    Self.takeStatus(from: headers, into: &call.record)
                    finish(&call, end: .trailersOnly, at: time, emit: emit)
                    return
                }
                call.record.responseMetadata = fields
                calls[streamID] = call
            } else {
                call.record.trailers = Self.metadata(headers)
                Self.takeStatus(from: headers, into: &call.record)
                // Trailers without END_STREAM are malformed HTTP; the call still ends at its status.
                finish(&call, end: .trailers, at: time, emit: emit)
            }
        }
    }

    /// A piece of DATA content on `streamID`.
    public mutating func data(_ piece: ByteBuffer, streamID: UInt32, direction: Direction, at time: UInt64) {
        guard var call = calls[streamID] else { return }
        let limits = self.limits
        switch direction {
        case .clientToServer:
            call.record.requestWireBytes += piece.readableBytes
            call.requestFramer.feed(
                piece,
                captureLimit: { index in
                    max(index == 0 ? limits.firstMessageCapture : 0, limits.keepMessages ? limits.messageCapture : 0)
                },
                onMessage: { message in
                    if call.record.requestMessages == 0 {
                        call.record.firstRequestMessage = message.captured.map {
                            $0.getSlice(at: $0.readerIndex, length: min($0.readableBytes, limits.firstMessageCapture))!
                        }
                        call.record.firstRequestMessageCompressed = message.compressed
                        call.record.firstRequestMessageLength = message.length
                    }
                    call.record.requestMessages += 1
                    if limits.keepMessages {
                        call.record.messages.append(
                            .init(
                                direction: .clientToServer, time: time, compressed: message.compressed,
                                length: message.length, captured: message.captured))
                    }
                })
            call.record.requestBytes = call.requestFramer.payloadBytes
        case .serverToClient:
            if call.record.firstResponseTime == nil { call.record.firstResponseTime = time }
            call.record.responseWireBytes += piece.readableBytes
            call.responseFramer.feed(
                piece,
                captureLimit: { _ in limits.keepMessages ? limits.messageCapture : 0 },
                onMessage: { message in
                    call.record.responseMessages += 1
                    if limits.keepMessages {
                        call.record.messages.append(
                            .init(
                                direction: .serverToClient, time: time, compressed: message.compressed,
                                length: message.length, captured: message.captured))
                    }
                })
            call.record.responseBytes = call.responseFramer.payloadBytes
        }
        calls[streamID] = call
    }

    /// A DATA frame with END_STREAM ended `direction` of `streamID`.
    public mutating func endStream(streamID: UInt32, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        guard var call = calls[streamID] else { return }
        switch direction {
        case .clientToServer:
            call.record.requestEndTime = time
            calls[streamID] = call
        case .serverToClient:
            // A server that ends with DATA has sent no trailers: no gRPC status.
            finish(&call, end: .trailers, at: time, emit: emit)
        }
    }

    /// A RST_STREAM travelling in `direction` ended `streamID`.
    public mutating func reset(
        streamID: UInt32, direction: Direction, code: UInt32, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) {
        guard var call = calls[streamID] else { return }
        finish(&call, end: .reset(by: direction, code: code), at: time, emit: emit)
    }

    /// A GOAWAY travelling in `direction`: streams above `lastStreamID` opened by the other side were not processed.
    public mutating func goAway(
        lastStreamID: UInt32, direction: Direction, code: UInt32, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) {
        guard direction == .serverToClient else { return }
        goAway = (lastStreamID, code)
        for id in calls.keys.sorted() where id > lastStreamID {
            if var call = calls[id] {
                finish(&call, end: .refusedByGoAway(code: code), at: time, emit: emit)
            }
        }
    }

    /// Ends every open call with `end` (connection closed, decoding stopped), in stream order.
    public mutating func finishAll(end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        for id in calls.keys.sorted() {
            if var call = calls[id] {
                finish(&call, end: end, at: time, emit: emit)
            }
        }
    }

    private mutating func finish(_ call: inout OpenCall, end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        calls[call.record.streamID] = nil
        call.record.endTime = time
        call.record.end = end
        emit(call.record)
    }

    private static func metadata(_ headers: HPACKHeaders) -> [HeaderField] {
        var fields: [HeaderField] = []
        for (name, value, _) in headers where !name.hasPrefix(":") {
            fields.append(HeaderField(name: name, value: value))
        }
        return fields
    }

    private static func takeStatus(from headers: HPACKHeaders, into record: inout GRPCCallRecord) {
        if let status = headers.first(name: "grpc-status") { record.grpcStatus = Int(status) }
        if let message = headers.first(name: "grpc-message") { record.grpcMessage = PercentDecoding.decode(message) }
    }
}
