import NIOCore

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
        /// Report calls, messages and trailers as `WireEvent`s while they happen (recording); off, the decoders
        /// build only the finished-call records spans need.
        public var recordEvents = false
        /// Payload bytes of each message kept in its event when `recordEvents` is on; the rest is only counted.
        public var messageCapture = 4 << 20

        public init() {}
    }

    private struct OpenCall: Sendable {
        var record: GRPCCallRecord
        var requestFramer = GRPCMessageFramer()
        var responseFramer = GRPCMessageFramer()
        var sawResponseHeaders = false
    }

    private var calls: [UInt32: OpenCall] = [:]

    /// Request header fields the record keeps apart from the metadata (or drops); any other pseudo-header is
    /// dropped, any other field is metadata.
    private enum RequestField: Sendable {
        case skip, authority, method, contentType, authorization, timeout, encoding
    }

    private static let requestFields = NameTable<RequestField>([
        ":path": .skip, ":scheme": .skip, ":authority": .authority, ":method": .method, "content-type": .contentType,
        "authorization": .authorization, "proxy-authorization": .authorization, "grpc-timeout": .timeout,
        "grpc-encoding": .encoding,
    ])
    /// Names and values seen before on this connection, made into strings once.
    private var strings = HeaderStrings()
    public var limits: Limits
    /// Highest stream id and code of the server's GOAWAY; streams above it are refused.
    private var goAway: (lastStream: UInt32, code: UInt32)?
    /// Events not yet taken, when `limits.recordEvents` is on.
    private var events: [WireEvent] = []

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Number of calls in flight.
    public var openCalls: Int { calls.count }

    /// Hands out the events reported since the last call (none unless `limits.recordEvents`).
    public mutating func takeEvents() -> [WireEvent] {
        guard !events.isEmpty else { return [] }
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    /// Stops reporting events (recording stopped); pending ones are dropped.
    public mutating func stopEvents() {
        limits.recordEvents = false
        events = []
    }

    private mutating func report(_ kind: WireEvent.Kind, streamID: UInt32, at time: UInt64) {
        events.append(WireEvent(kind, time: time, streamID: streamID))
    }

    /// A complete header block arrived on `streamID` travelling in `direction`.
    public mutating func headers(
        _ headers: HeaderBlock,
        streamID: UInt32,
        direction: Direction,
        endStream: Bool,
        at time: UInt64,
        emit: (GRPCCallRecord) -> Void
    ) throws {
        switch direction {
        case .clientToServer:
            if let index = calls.index(forKey: streamID) {
                // Request trailers: gRPC clients do not send them, but HTTP/2 allows it.
                if endStream {
                    calls.values[index].record.requestEndTime = time
                    if limits.recordEvents { report(.requestEnded, streamID: streamID, at: time) }
                }
                return
            }
            guard streamID & 1 == 1 else { return }
            guard calls.count < limits.maxOpenCalls else {
                throw WireDecodingError("more than \(limits.maxOpenCalls) calls open at once")
            }
            let path = headers.firstIndex(name: ":path").map { headers.value(at: $0, strings: &strings) } ?? ""
            var record = GRPCCallRecord(streamID: streamID, path: path, startTime: time)
            record.requestMetadata.reserveCapacity(headers.count)  // one allocation, not one per doubling
            for index in 0..<headers.count {
                let name = lowerCasedName(headers, at: index)
                switch Self.requestFields[name] {
                case .skip: continue
                case .authority: record.authority = headers.value(at: index, strings: &strings)
                case .method: record.method = headers.value(at: index, strings: &strings)
                case .contentType: record.contentType = headers.value(at: index, strings: &strings)
                case .authorization: record.hadAuthorization = true
                case .timeout:
                    let value = headers.value(at: index, strings: &strings)
                    record.timeoutNanos = GRPCTimeout.nanoseconds(value)
                    record.requestMetadata.append(HeaderField(name: name, value: value))
                case .encoding:
                    let value = headers.value(at: index, strings: &strings)
                    record.requestEncoding = value
                    record.requestMetadata.append(HeaderField(name: name, value: value))
                case nil:
                    if name.utf8.first == UInt8(ascii: ":") { continue }
                    record.requestMetadata.append(HeaderField(name: name, value: headers.value(at: index, strings: &strings)))
                }
            }
            if endStream { record.requestEndTime = time }
            if limits.recordEvents {
                let fields = headers.rawFields.map { field -> RawHeaderField in
                    let name = field.name.lowercased()
                    // A secret never leaves the decoder, whatever the recorder does with the rest.
                    return name == "authorization" || name == "proxy-authorization"
                        ? RawHeaderField(name: name, value: [], redacted: true) : field
                }
                report(.callStarted(path: record.path, headers: fields), streamID: streamID, at: time)
                if endStream { report(.requestEnded, streamID: streamID, at: time) }
            }
            if let goAway, streamID > goAway.lastStream {
                // Sent before the client read the server's GOAWAY: the server will not process it.
                finish(OpenCall(record: record), end: .refusedByGoAway(code: goAway.code), at: time, emit: emit)
                return
            }
            calls[streamID] = OpenCall(record: record)
        case .serverToClient:
            // Updated in place, and taken out of the table (not copied) when it ends: a call record holds a dozen
            // references, and this runs for every response. (Reading a field through `calls.values[index]` would
            // copy the whole call; `respond` reads and writes it through one `inout` access.)
            guard let index = calls.index(forKey: streamID) else { return }
            let first = Self.respond(headers, at: time, call: &calls.values[index])
            if first, !endStream {
                calls.values[index].record.responseMetadata = metadata(headers)
                if limits.recordEvents { report(.responseHeaders(headers.rawFields), streamID: streamID, at: time) }
                return
            }
            // Trailers, or Trailers-Only (the first headers with END_STREAM). Trailers without END_STREAM are
            // malformed HTTP; the call still ends at its status.
            if limits.recordEvents {
                report(.trailers(headers.rawFields, trailersOnly: first), streamID: streamID, at: time)
            }
            var call = calls.remove(at: index).value
            call.record.trailers = metadata(headers)
            Self.takeStatus(from: headers, into: &call.record)
            finish(call, end: first ? .trailersOnly : .trailers, at: time, emit: emit)
        }
    }

    /// Notes a response header block on `call`: the first response time, and for the first block its HTTP status.
    /// True when this is the call's first response header block.
    private static func respond(_ headers: HeaderBlock, at time: UInt64, call: inout OpenCall) -> Bool {
        if call.record.firstResponseTime == nil { call.record.firstResponseTime = time }
        guard !call.sawResponseHeaders else { return false }
        call.sawResponseHeaders = true
        if let status = headers.first(name: ":status") { call.record.httpStatus = Int(status) }
        return true
    }

    /// A piece of DATA content on `streamID`.
    ///
    /// The open call is updated in place (one hash lookup, no copy of the call): this runs once per DATA piece on
    /// the forwarding path.
    public mutating func data(_ piece: ByteBuffer, streamID: UInt32, direction: Direction, at time: UInt64) {
        guard let index = calls.index(forKey: streamID) else { return }
        Self.data(piece, call: &calls.values[index], direction: direction, at: time, limits: limits, events: &events)
    }

    private static func data(
        _ piece: ByteBuffer, call: inout OpenCall, direction: Direction, at time: UInt64, limits: Limits,
        events: inout [WireEvent]
    ) {
        let streamID = call.record.streamID
        switch direction {
        case .clientToServer:
            call.record.requestWireBytes += piece.readableBytes
            var requestMessages = call.record.requestMessages
            var first: (message: ByteBuffer?, compressed: Bool, length: Int)?
            call.requestFramer.feed(
                piece,
                captureLimit: { index in
                    max(index == 0 ? limits.firstMessageCapture : 0, limits.recordEvents ? limits.messageCapture : 0)
                },
                onMessage: { message in
                    if requestMessages == 0 {
                        let kept = message.pieces.prefix(limits.firstMessageCapture)
                        first = (kept.isEmpty ? nil : kept.joined, message.compressed, message.length)
                    }
                    requestMessages += 1
                    if limits.recordEvents {
                        events.append(
                            WireEvent(
                                .message(Self.wireMessage(message, .clientToServer, capture: limits.messageCapture)),
                                time: time, streamID: streamID))
                    }
                })
            if let first {
                call.record.firstRequestMessage = first.message
                call.record.firstRequestMessageCompressed = first.compressed
                call.record.firstRequestMessageLength = first.length
            }
            call.record.requestMessages = requestMessages
            call.record.requestBytes = call.requestFramer.payloadBytes
        case .serverToClient:
            if call.record.firstResponseTime == nil { call.record.firstResponseTime = time }
            call.record.responseWireBytes += piece.readableBytes
            var responseMessages = call.record.responseMessages
            call.responseFramer.feed(
                piece,
                captureLimit: { _ in limits.recordEvents ? limits.messageCapture : 0 },
                onMessage: { message in
                    responseMessages += 1
                    if limits.recordEvents {
                        events.append(
                            WireEvent(
                                .message(Self.wireMessage(message, .serverToClient, capture: limits.messageCapture)),
                                time: time, streamID: streamID))
                    }
                })
            call.record.responseMessages = responseMessages
            call.record.responseBytes = call.responseFramer.payloadBytes
        }
    }

    /// A DATA frame with END_STREAM ended `direction` of `streamID`.
    public mutating func endStream(streamID: UInt32, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        guard let index = calls.index(forKey: streamID) else { return }
        switch direction {
        case .clientToServer:
            calls.values[index].record.requestEndTime = time
            if limits.recordEvents { report(.requestEnded, streamID: streamID, at: time) }
        case .serverToClient:
            // A server that ends with DATA has sent no trailers: no gRPC status.
            finish(calls.remove(at: index).value, end: .trailers, at: time, emit: emit)
        }
    }

    /// A RST_STREAM travelling in `direction` ended `streamID`.
    public mutating func reset(
        streamID: UInt32, direction: Direction, code: UInt32, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) {
        guard let call = calls.removeValue(forKey: streamID) else { return }
        finish(call, end: .reset(by: direction, code: code), at: time, emit: emit)
    }

    /// A GOAWAY travelling in `direction`: streams above `lastStreamID` opened by the other side were not processed.
    public mutating func goAway(
        lastStreamID: UInt32, direction: Direction, code: UInt32, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) {
        guard direction == .serverToClient else { return }
        goAway = (lastStreamID, code)
        for id in calls.keys.sorted() where id > lastStreamID {
            if let call = calls.removeValue(forKey: id) {
                finish(call, end: .refusedByGoAway(code: code), at: time, emit: emit)
            }
        }
    }

    /// Ends every open call with `end` (connection closed, decoding stopped), in stream order.
    public mutating func finishAll(end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        for id in calls.keys.sorted() {
            if let call = calls.removeValue(forKey: id) {
                finish(call, end: end, at: time, emit: emit)
            }
        }
    }

    /// Ends `call`, already taken out of the table.
    private mutating func finish(
        _ call: consuming OpenCall, end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) {
        var call = call
        call.record.endTime = time
        call.record.end = end
        if limits.recordEvents { report(.callEnded(end), streamID: call.record.streamID, at: time) }
        emit(call.record)
    }

    private static func wireMessage(
        _ message: GRPCMessageFramer.Message, _ direction: Direction, capture: Int
    ) -> WireMessage {
        // The first request message may be kept longer for attribute extraction.
        var pieces = message.pieces.prefix(capture)
        // Slices keep the whole reads they point into alive while the message waits for the recorder. A message
        // far smaller than those reads (a small call's, or one straddling two large reads) is copied out instead,
        // so the recorder's queue limit, which counts payload bytes, also bounds the memory behind them.
        if pieces.retainedBytes > 4 * pieces.count + 4096 { pieces = pieces.compacted }
        return WireMessage(direction: direction, compressed: message.compressed, length: message.length, pieces: pieces)
    }

    /// The fields of a response block that are not pseudo-headers, as sent.
    private mutating func metadata(_ headers: HeaderBlock) -> [HeaderField] {
        var fields: [HeaderField] = []
        fields.reserveCapacity(headers.count)
        for index in 0..<headers.count where !headers.isPseudo(at: index) {
            fields.append(
                HeaderField(name: headers.name(at: index, strings: &strings), value: headers.value(at: index, strings: &strings)))
        }
        return fields
    }

    /// The name of field `index` in lower case. HTTP/2 requires lower-case names, but a peer may send otherwise;
    /// never let a secret slip by case.
    private mutating func lowerCasedName(_ headers: HeaderBlock, at index: Int) -> String {
        let name = headers.name(at: index, strings: &strings)
        return name.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? name.lowercased() : name
    }

    private static func takeStatus(from headers: HeaderBlock, into record: inout GRPCCallRecord) {
        if let status = headers.first(name: "grpc-status") { record.grpcStatus = Int(status) }
        if let message = headers.first(name: "grpc-message") { record.grpcMessage = PercentDecoding.decode(message) }
    }
}
