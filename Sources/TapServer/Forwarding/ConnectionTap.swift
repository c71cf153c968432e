import Logging
import NIOCore
import Synchronization
import TapTrace
import TapWire

/// Open connections by the kind the decoder found (`undetermined` until the first bytes tell).
final class OpenConnectionGauge: Sendable {
    private let counts = Mutex<[String: Int]>([:])

    init() {}

    func move(from old: String?, to new: String?) {
        counts.withLock { counts in
            if let old { counts[old, default: 0] -= 1 }
            if let new { counts[new, default: 0] += 1 }
        }
    }

    /// Kinds with their open count (kinds seen once stay listed at 0, as Prometheus prefers).
    var current: [String: Int] { counts.withLock { $0 } }
}

/// The observing side of one proxied connection: feeds the decoder and hands what it finds to the pipeline.
///
/// Lives on the connection's event loop, shared by the two splice handlers. Its work per read is one clock read
/// and the decoder's frame walk; spans are built and written elsewhere.
final class ConnectionTap {
    private var decoder: ConnectionDecoder
    private let info: ConnectionInfo
    private let pipeline: SpanPipeline
    private let logger: Logger
    private var reportedStop = false
    private var closed = false
    private var closeReason = "closed"
    private var calls = 0
    /// Gets the decoder's events while recording; nil when not recording or once recording stopped.
    private var recorder: SessionRecorder?
    /// The correlation id of the latest call seen on this connection, for log lines.
    private var correlationID: String?
    /// Calls the connection's end cut off: method and correlation id.
    private var lostCalls: [(path: String, correlationID: String?)] = []
    private let gauge: OpenConnectionGauge?
    private var gaugeKind: ConnectionKind = .undetermined

    init(
        info: ConnectionInfo, pipeline: SpanPipeline, limits: GRPCCallAssembler.Limits, logger: Logger,
        gauge: OpenConnectionGauge? = nil, recorder: SessionRecorder? = nil
    ) {
        self.info = info
        self.pipeline = pipeline
        self.decoder = ConnectionDecoder(limits: limits)
        self.logger = logger
        self.recorder = recorder
        recorder?.connectionOpened(info)
        self.gauge = gauge
        gauge?.move(from: nil, to: gaugeKind.rawValue)
    }

    private func updateGauge() {
        if let gauge, decoder.kind != gaugeKind {
            gauge.move(from: gaugeKind.rawValue, to: decoder.kind.rawValue)
            gaugeKind = decoder.kind
        }
    }

    /// Decodes a copy of `buffer`, which was read at `now` (ns since the epoch) and already forwarded.
    func observe(_ buffer: ByteBuffer, direction: Direction, at now: UInt64) {
        guard decoder.isDecoding else {
            decoder.feed(buffer, direction: direction, at: now, emit: { _ in })
            return
        }
        decoder.feed(buffer, direction: direction, at: now, emit: submit)
        if recorder != nil { handOverEvents() }
        if gaugeKind == .undetermined { updateGauge() }
        reportStop()
    }

    func halfClosed(_ direction: Direction) {
        logger.trace("half-closed", metadata: ["connection": "\(info.id)", "direction": "\(direction)"])
    }

    func failed(_ direction: Direction, error: Error, reset: Bool) {
        let side = direction == .clientToServer ? "client" : "upstream"
        closeReason = reset ? "reset by \(side)" : "\(side) error: \(error)"
        logger.debug("connection error", metadata: ["connection": "\(info.id)", "error": "\(error)"])
    }

    /// Logs and counts, once, that the decoder stopped.
    private func reportStop() {
        guard !reportedStop, let reason = decoder.stoppedReason else { return }
        reportedStop = true
        pipeline.decodingStopped(reason: reason)
        var metadata: Logger.Metadata = ["connection": "\(info.id)", "reason": "\(reason)"]
        if let correlationID { metadata["correlation_id"] = "\(correlationID)" }
        logger.warning("decoding stopped; forwarding continues", metadata: metadata)
    }

    func sideClosed(_ direction: Direction) {
        guard !closed else { return }
        closed = true
        let now = WallClock.nowNanos()
        decoder.close(at: now, emit: submit)
        reportStop()
        if recorder != nil { handOverEvents() }
        updateGauge()
        gauge?.move(from: gaugeKind.rawValue, to: nil)
        if !lostCalls.isEmpty {
            var metadata: Logger.Metadata = [
                "connection": "\(info.id)", "reason": "\(closeReason)", "calls": "\(lostCalls.count)",
                "methods": .array(lostCalls.map { .string($0.path) }),
            ]
            let ids = lostCalls.compactMap(\.correlationID)
            if ids.count == 1 { metadata["correlation_id"] = "\(ids[0])" }
            if ids.count > 1 { metadata["correlation_ids"] = .array(ids.map { .string($0) }) }
            logger.warning("connection closed with calls in flight", metadata: metadata)
        }
        let summary = ConnectionSummary(
            info: info, kind: decoder.kind.rawValue, bytesToServer: decoder.bytesToServer,
            bytesToClient: decoder.bytesToClient, endTimeUnixNano: now, decodingStopped: decoder.stoppedReason,
            closeReason: closeReason, calls: calls)
        recorder?.connectionClosed(summary)
        pipeline.submit(connection: summary)
    }

    /// Passes the decoder's events to the recorder; when it has stopped, the decoder stops producing them.
    private func handOverEvents() {
        let events = decoder.takeEvents()
        guard !events.isEmpty, let recorder else { return }
        if !recorder.submit(connection: info.id, events: events) {
            decoder.stopEvents()
            self.recorder = nil
        }
    }

    private func submit(_ record: GRPCCallRecord) {
        calls += 1
        let id = record.requestMetadata.first { $0.name == "x-gitlab-correlation-id" }?.value
        if let id { correlationID = id }
        if case .connectionLost = record.end { lostCalls.append((record.path, id)) }
        pipeline.submit(call: record, connection: info)
    }
}
