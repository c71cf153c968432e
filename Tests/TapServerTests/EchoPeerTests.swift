import Foundation
import TapServer
import TapTrace
import Testing

/// A real grpcio client and server (C core) through the tap: every call kind, on unix sockets and TCP.
@Suite(.serialized)
struct EchoPeerTests {
    static let scenarios = [
        "unary", "unary_large", "client_stream", "server_stream", "bidi", "metadata", "error", "trailers_only",
        "cancel", "deadline",
    ]

    /// Starts the echo server on a unix socket and a TCP port; returns (process, unix address, tcp address).
    static func startEchoServer(in dir: TempDir) async throws -> (PeerProcess, String, String) {
        try Peers.requirePython()
        let server = try PeerProcess(
            Peers.python,
            [Peers.script("echo_server.py"), "--listen", "unix:" + dir.file("echo.sock"), "--listen", "tcp://127.0.0.1:0"],
            dir: dir, name: "echo")
        let ready = try await server.waitReady()
        let json = try JSONSerialization.jsonObject(with: Data(ready.dropFirst("READY ".count).utf8)) as! [String: Any]
        let listen = json["listen"] as! [String]
        let tcp = try #require(listen.first { $0.hasPrefix("tcp://") })
        return (server, "unix:" + dir.file("echo.sock"), tcp)
    }

    static func client(_ target: String, _ scenario: String, _ extra: [String] = []) async throws -> CommandResult {
        try await runCommand(
            Peers.python, [Peers.script("echo_client.py"), "--target", target, "--scenario", scenario] + extra)
    }

    @Test("every gRPC call kind gives the same result through the tap and exactly one correct span", arguments: ["unix", "tcp"])
    func everyCallKindThroughTheTap(transport: String) async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, unixAddress, tcpAddress) = try await Self.startEchoServer(in: dir)
        defer { server.stop() }
        let upstream = try TapAddress(parsing: transport == "unix" ? unixAddress : tcpAddress)
        let listen = transport == "unix" ? TapAddress.unix(path: dir.file("tap.sock")) : .tcp(host: "127.0.0.1", port: 0)
        let authHex = String(repeating: "c0ffee", count: 10) + "abcd"

        try await TapHarness.with(listen: listen, upstream: upstream) { tap in
            for scenario in Self.scenarios {
                let id = "\(transport)-\(scenario)"
                let args = ["--correlation-id", id, "--auth-hex", authHex, "--auth-ts", "1700000000"]
                let direct = try await Self.client(upstream.description, scenario, args)
                let tapped = try await Self.client(tap.address, scenario, args)
                #expect(direct.status == 0, "\(scenario) direct: \(direct.stdout) \(direct.stderr)")
                #expect(tapped.status == 0, "\(scenario) via tap: \(tapped.stdout) \(tapped.stderr)")
                #expect(tapped.stdout == direct.stdout, "\(scenario): results differ through the tap")
            }
            let spans = try await tap.waitForSpans("one span per scenario") { spans in
                Self.scenarios.allSatisfy { s in
                    spans.contains { $0.attributes["gitlab.correlation_id"] == .string("\(transport)-\(s)") }
                }
            }
            // Let late duplicates, if any, arrive before counting.
            try await Task.sleep(for: .milliseconds(200))
            for scenario in Self.scenarios {
                let mine = tap.spans(correlationID: "\(transport)-\(scenario)")
                #expect(mine.count == 1, "\(scenario): \(mine.count) spans")
                guard let span = mine.first else { continue }
                Self.check(span, scenario: scenario, transport: transport)
            }
            for span in spans {
                let line = SpanJSONEncoder.encode(span)
                #expect(!line.contains(authHex), "authorization leaked into a span")
                #expect(!line.contains("authorization"))
            }
        }
    }

    static func check(_ span: Span, scenario: String, transport: String) {
        let a = span.attributes
        #expect(a["rpc.system"] == .string("grpc"))
        #expect(a["rpc.service"] == .string("taptest.Echo"))
        #expect(a["network.transport"] == .string(transport == "unix" ? "unix" : "tcp"))
        #expect(a["gitlab.client_name"] == .string("gitlab-workhorse"))
        #expect(span.kind == .server)
        #expect(span.endTimeUnixNano >= span.startTimeUnixNano)
        #expect(span.traceID.isValid)
        let requests = a["rpc.grpc.request.messages"]?.intValue ?? -1
        let responses = a["rpc.grpc.response.messages"]?.intValue ?? -1
        switch scenario {
        case "unary", "metadata":
            #expect(span.name == "taptest.Echo/Unary")
            #expect(span.status == .ok)
            #expect(a["rpc.grpc.status_code"] == .int(0))
            #expect(requests == 1 && responses == 1)
        case "unary_large":
            #expect(span.name == "taptest.Echo/Unary")
            #expect(span.status == .ok)
            #expect((a["rpc.grpc.request.bytes"]?.intValue ?? 0) >= 5 * 1024 * 1024)
            #expect((a["rpc.grpc.response.bytes"]?.intValue ?? 0) >= 5 * 1024 * 1024)
        case "client_stream":
            #expect(span.name == "taptest.Echo/ClientStream")
            #expect(requests == 100 && responses == 1)
            #expect((a["rpc.grpc.request.bytes"]?.intValue ?? 0) >= 100 * 64 * 1024)
        case "server_stream":
            #expect(span.name == "taptest.Echo/ServerStream")
            #expect(requests == 1 && responses == 200)
        case "bidi":
            #expect(span.name == "taptest.Echo/Bidi")
            #expect(requests == 50 && responses == 50)
        case "error":
            #expect(span.status == Span.Status(code: .error, message: "INVALID_ARGUMENT: bad input: 100% wrong – ünïcode"))
            #expect(a["rpc.grpc.status_code"] == .int(3))
            #expect(responses == 1)
        case "trailers_only":
            #expect(span.status == Span.Status(code: .error, message: "NOT_FOUND: no such thing"))
            #expect(a["rpc.grpc.end"] == .string("trailers_only"))
            #expect(responses == 0)
        case "cancel":
            #expect(span.status == Span.Status(code: .error, message: "stream reset by client (CANCEL)"))
            #expect(a["rpc.grpc.end"] == .string("reset"))
        case "deadline":
            #expect(span.status.code == .error)
            let timeout = a["rpc.grpc.timeout_ns"]?.intValue ?? 0
            #expect(timeout > 100_000_000 && timeout <= 300_000_000)
            #expect(span.status.message?.contains("DEADLINE_EXCEEDED") == true, "\(span.status)")
        default:
            Issue.record("no expectations for \(scenario)")
        }
    }

    @Test("the RPC span continues the caller's W3C trace")
    func continuesCallersTrace() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, unixAddress, _) = try await Self.startEchoServer(in: dir)
        defer { server.stop() }
        try await TapHarness.with(listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: unixAddress)) { tap in
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            let parent = "00f067aa0ba902b7"
            let result = try await Self.client(
                tap.address, "unary", ["--correlation-id", "traced", "--trace-id", traceID, "--parent-span-id", parent])
            #expect(result.status == 0, "\(result.stderr)")
            let untraced = try await Self.client(tap.address, "unary", ["--correlation-id", "untraced"])
            #expect(untraced.status == 0)
            try await tap.waitForSpans { spans in spans.count >= 2 }
            let span = try #require(tap.spans(correlationID: "traced").first)
            #expect(span.traceID.description == traceID)
            #expect(span.parentSpanID?.description == parent)
            #expect(span.sampled)
            #expect(span.attributes["tap.trace.propagation"] == .string("traceparent"))
            let fresh = try #require(tap.spans(correlationID: "untraced").first)
            #expect(fresh.parentSpanID == nil)
            #expect(fresh.traceID.description != traceID)
        }
    }
}
