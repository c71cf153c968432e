import Foundation
import TapTrace
import Testing

/// Real Trace2 captures made by `Fixtures/make-trace2.sh` with the installed git.
enum Trace2Fixture {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent("trace2")

    static func bytes(_ name: String) throws -> [UInt8] {
        let url = directory.appendingPathComponent(name + ".jsonl")
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw FixtureError(description: "missing fixture \(url.path): run Fixtures/make-trace2.sh")
        }
        return Array(data)
    }

    static func events(_ name: String) throws -> [Trace2Event] {
        var parser = Trace2LineParser()
        let events = parser.feed(try bytes(name)) + parser.finish()
        #expect(parser.counts.malformed == 0)
        return events
    }

    /// The processes of a capture, in the order they finished.
    static func processes(_ name: String) throws -> [GitProcess] {
        processes(from: try events(name))
    }

    static func processes(from events: [Trace2Event]) -> [GitProcess] {
        var assembler = Trace2ProcessAssembler()
        var out: [GitProcess] = []
        for event in events {
            for case .finished(let process) in assembler.add(event, now: event.timeUnixNano ?? 0) {
                out.append(process)
            }
        }
        for case .finished(let process) in assembler.finishAll() { out.append(process) }
        return out
    }

    /// Assembler outputs (started and finished) for a capture.
    static func outputs(_ name: String) throws -> [Trace2ProcessAssembler.Output] {
        var assembler = Trace2ProcessAssembler()
        var out: [Trace2ProcessAssembler.Output] = []
        for event in try events(name) { out += assembler.add(event, now: event.timeUnixNano ?? 0) }
        return out + assembler.finishAll()
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
}

/// An RPC span as the tap's span builder makes it, with only what the correlator reads.
func rpcSpan(
    _ name: String = "gitaly.SmartHTTPService/PostUploadPackWithSidechannel", traceLow: UInt64, spanID: UInt64,
    start: UInt64, end: UInt64, correlationID: String? = nil, relativePath: String? = nil, storage: String = "default"
) -> Span {
    var attributes: SpanAttributes = ["rpc.system": .string("grpc")]
    if let correlationID { attributes["gitlab.correlation_id"] = .string(correlationID) }
    if let relativePath {
        attributes["gitaly.repository.relative_path"] = .string(relativePath)
        attributes["gitaly.repository.storage"] = .string(storage)
    }
    return Span(
        traceID: TraceID(high: 0xAAAA, low: traceLow), spanID: SpanID(spanID), name: name, kind: .server,
        startTimeUnixNano: start, endTimeUnixNano: end, attributes: attributes)
}

extension Span {
    func string(_ key: String) -> String? {
        if case .string(let value) = attributes[key] { return value }
        return nil
    }
    func int(_ key: String) -> Int64? {
        if case .int(let value) = attributes[key] { return value }
        return nil
    }
}

extension Array where Element == Span {
    func named(_ name: String) -> [Span] { filter { $0.name == name } }
    func one(_ name: String) throws -> Span {
        let found = named(name)
        guard found.count == 1 else {
            throw FixtureError(description: "expected one span named \(name), found \(found.count): \(map(\.name))")
        }
        return found[0]
    }
    func span(id: SpanID?) -> Span? { first { $0.spanID == id } }
}
