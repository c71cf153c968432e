import NIOCore
import TapWire

/// Caps and choices of a recording.
public struct RecordingLimits: Sendable, Equatable {
    /// Payload bytes stored per gRPC message; a longer message keeps its real length and its first bytes.
    public var maxMessageBytes = 4 << 20
    /// Bytes stored per sidechannel and direction; the rest is counted and a notice says so.
    public var maxSidechannelBytes = 64 << 20
    /// A file is closed and the next one opened (`FILE.1`, `FILE.2`, ...) before it would pass this size.
    public var maxFileBytes: UInt64 = 1 << 30
    /// Files per recording; when the last is full, recording stops with a notice.
    public var maxFiles = 8
    /// Withhold personal metadata (`HeaderRedaction.personalKeys`) besides `authorization`.
    public var redactPersonal = false

    public init() {}
}

/// Turns one connection's `WireEvent`s into records: assigns call and sidechannel ids, withholds secrets and
/// applies the payload caps. Pure; one per recording, fed from the recorder's thread.
public struct EventEncoder: Sendable {
    private struct CallKey: Hashable {
        var connection: UInt64
        var yamux: UInt32?
        var fromGitaly: Bool
        var stream: UInt32
    }
    private struct SidechannelKey: Hashable {
        var connection: UInt64
        var yamux: UInt32
    }
    private struct SidechannelState {
        var id: UInt64
        var toServer: UInt64 = 0
        var toClient: UInt64 = 0
        var cut = false
    }

    public let limits: RecordingLimits
    private let redaction: HeaderRedaction
    private var calls: [CallKey: UInt64] = [:]
    private var sidechannels: [SidechannelKey: SidechannelState] = [:]
    private var nextCall: UInt64 = 1
    private var nextSidechannel: UInt64 = 1

    public init(limits: RecordingLimits) {
        self.limits = limits
        self.redaction = HeaderRedaction(personal: limits.redactPersonal)
    }

    /// Calls open now (started, not ended).
    public var openCalls: Int { calls.count }

    /// The records for `event`, seen on `connection` (none for an event of a call that was never started here).
    public mutating func records(for event: WireEvent, connection: UInt64) -> [SessionRecord] {
        let key = CallKey(
            connection: connection, yamux: event.yamuxStreamID, fromGitaly: event.fromGitaly, stream: event.streamID)
        switch event.kind {
        case .callStarted(let path, let headers):
            let id = nextCall
            nextCall += 1
            calls[key] = id
            return [
                .callStarted(
                    call: id, connection: connection, time: event.time, streamID: event.streamID,
                    yamuxStreamID: event.yamuxStreamID, fromGitaly: event.fromGitaly, path: path,
                    headers: redaction.apply(headers))
            ]
        case .responseHeaders(let headers):
            guard let id = calls[key] else { return [] }
            return [.responseHeaders(call: id, time: event.time, headers: redaction.apply(headers))]
        case .message(let message):
            guard let id = calls[key] else { return [] }
            return [
                .message(
                    call: id, time: event.time, direction: message.direction, compressed: message.compressed,
                    length: UInt32(clamping: message.length), payload: message.pieces.prefix(limits.maxMessageBytes))
            ]
        case .requestEnded:
            guard let id = calls[key] else { return [] }
            return [.requestEnded(call: id, time: event.time)]
        case .trailers(let headers, let trailersOnly):
            guard let id = calls[key] else { return [] }
            return [
                .trailers(call: id, time: event.time, trailersOnly: trailersOnly, headers: redaction.apply(headers))
            ]
        case .callEnded(let end):
            guard let id = calls.removeValue(forKey: key) else { return [] }
            return [.callEnded(call: id, time: event.time, end: end)]
        case .sidechannelOpened(let scID):
            guard let yamux = event.yamuxStreamID else { return [] }
            let id = nextSidechannel
            nextSidechannel += 1
            sidechannels[SidechannelKey(connection: connection, yamux: yamux)] = SidechannelState(id: id)
            return [
                .sidechannelOpened(
                    sidechannel: id, connection: connection, time: event.time, yamuxStreamID: yamux, id: scID)
            ]
        case .sidechannelData(let direction, let bytes):
            guard let yamux = event.yamuxStreamID,
                var state = sidechannels[SidechannelKey(connection: connection, yamux: yamux)]
            else { return [] }
            defer { sidechannels[SidechannelKey(connection: connection, yamux: yamux)] = state }
            let before = direction == .clientToServer ? state.toServer : state.toClient
            let n = UInt64(bytes.readableBytes)
            if direction == .clientToServer { state.toServer += n } else { state.toClient += n }
            let room = UInt64(limits.maxSidechannelBytes) > before ? UInt64(limits.maxSidechannelBytes) - before : 0
            var out: [SessionRecord] = []
            if room > 0 {
                let keep = Int(min(room, n))
                out.append(
                    .sidechannelData(
                        sidechannel: state.id, time: event.time, direction: direction,
                        payload: bytes.getSlice(at: bytes.readerIndex, length: keep)!))
            }
            if n > room, !state.cut {
                state.cut = true
                out.append(
                    .notice(
                        time: event.time, kind: .sidechannelCut,
                        text:
                            "sidechannel \(state.id): bytes past \(limits.maxSidechannelBytes) per direction are counted, not stored"
                    ))
            }
            return out
        case .sidechannelEnded(let end):
            guard let yamux = event.yamuxStreamID,
                let state = sidechannels.removeValue(forKey: SidechannelKey(connection: connection, yamux: yamux))
            else { return [] }
            return [
                .sidechannelEnded(
                    sidechannel: state.id, time: event.time, end: end, bytesToServer: state.toServer,
                    bytesToClient: state.toClient, cut: state.cut)
            ]
        }
    }
}
