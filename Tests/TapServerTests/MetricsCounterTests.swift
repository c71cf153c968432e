import Foundation
import Logging
import NIOPosix
import TapTrace
import Testing

@testable import TapServer

/// The tap's own counters on `/metrics` (`gitaly_tap_*`), checked by value against traffic through a real tap.
@Suite(.serialized)
struct MetricsCounterTests {
    /// The client preface and an empty SETTINGS frame, a HEADERS frame on stream 0 (a connection error in HTTP/2,
    /// RFC 9113 §6.2: the decoder stops at it), then a PING that the upstream answers.
    static let headersOnStreamZeroThenPing: [UInt8] =
        Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0] + [0, 0, 0, 1, 0x4, 0, 0, 0, 0]
        + [0, 0, 8, 6, 0, 0, 0, 0, 0] + Array("tap-ping".utf8)

    /// True when `bytes` (an HTTP/2 stream from the server) holds the PING ACK for `tap-ping` (RFC 9113 §4.1, §6.7).
    static func holdsPingAck(_ bytes: [UInt8]) -> Bool {
        var at = 0
        while at + 9 <= bytes.count {
            let length = Int(bytes[at]) << 16 | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2])
            guard at + 9 + length <= bytes.count else { return false }
            if bytes[at + 3] == 6, bytes[at + 4] & 1 == 1,
                bytes[(at + 9)..<(at + 9 + length)].elementsEqual("tap-ping".utf8)
            {
                return true
            }
            at += 9 + length
        }
        return false
    }

    /// Scrapes `/metrics` at `address` until `done` holds for its text; fails naming `what`, with the last text.
    static func scrape(_ address: String, until what: String, _ done: (String) -> Bool) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(30)
        var text = ""
        while ContinuousClock.now < deadline {
            text = try MetricsTests.get(address, "/metrics").1
            if done(text) { return text }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw PeerError("timed out waiting for \(what); last scrape:\n\(text)")
    }

    static func value(_ text: String, _ series: String) -> Double? {
        // The series name with its labels, or followed by a space when it has none.
        MetricsTests.value(text, series.hasSuffix("}") ? series : series + " ")
    }

    /// A metrics endpoint on a TCP port of its own; returns it and its address.
    static func endpoint(_ metrics: TapMetrics) async throws -> (MetricsServer, String) {
        var logger = Logger(label: "metrics-test")
        logger.logLevel = .warning
        let server = try await MetricsServer(
            address: .tcp(host: "127.0.0.1", port: 0), metrics: metrics, group: MultiThreadedEventLoopGroup.singleton,
            logger: logger, healthy: { true })
        return (server, "tcp://127.0.0.1:\(try #require(server.port))")
    }

    @Test(
        "the gitaly-tap process counts one span per unary call, and a connection whose decoding stops once by reason plus its connection span"
    )
    func spansAndDecodingStopped() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, tap) = try await ShutdownTests.start(in: dir, drainTimeout: 5)
        defer {
            tap.stop()
            echo.stop()
        }
        try await tap.waitForFile(dir.file("metrics.sock"))
        let endpoint = "unix:" + dir.file("metrics.sock")
        let stopped = "gitaly_tap_decoding_stopped_total{reason=\"HEADERS frame on stream\"}"
        let idle = try MetricsTests.get(endpoint, "/metrics").1
        #expect(Self.value(idle, "gitaly_tap_spans_total") == 0, "\(idle)")
        #expect(!idle.contains("gitaly_tap_decoding_stopped_total{"))

        // Decoding stops at the bad frame; forwarding goes on: the PING after it reaches the upstream, and the
        // upstream's ACK comes back through the tap.
        let malformed = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
        try malformed.write(Self.headersOnStreamZeroThenPing)
        var answer: [UInt8] = []
        while !Self.holdsPingAck(answer) {
            guard try malformed.readToEnd(limit: 1, timeout: 10, onChunk: { answer += $0 }) > 0 else { break }
        }
        #expect(Self.holdsPingAck(answer), "the upstream's answer: \(answer)")
        // Counted when decoding stops, while the connection is still open (not only when it ends).
        let whileOpen = try MetricsTests.get(endpoint, "/metrics").1
        #expect(Self.value(whileOpen, stopped) == 1, "\(whileOpen)")
        malformed.close()
        _ = try await Self.scrape(endpoint, until: "the stopped connection counted") {
            Self.value($0, "gitaly_tap_connections_total{kind=\"http2\"}") == 1
        }

        let calls = 5
        for _ in 0..<calls {
            let result = try await EchoPeerTests.client("unix:" + dir.file("tap.sock"), "unary")
            #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
        }
        // The pipeline handles observations in order and a healthy HTTP/2 connection has no span of its own: once
        // the last connection is counted, every span before it is counted too.
        let text = try await Self.scrape(endpoint, until: "\(calls + 1) HTTP/2 connections closed") {
            Self.value($0, "gitaly_tap_connections_total{kind=\"http2\"}") == Double(calls + 1)
        }
        #expect(
            Self.value(text, "gitaly_tap_spans_total") == Double(calls + 1),
            "a span per call, one for the stopped connection")
        #expect(Self.value(text, stopped) == 1)
        let reasons = text.split(separator: "\n").filter { $0.hasPrefix("gitaly_tap_decoding_stopped_total{") }
        #expect(reasons.count == 1, "\(reasons)")
        #expect(Self.value(text, "gitaly_tap_spans_dropped_total") == 0)
        #expect(tap.stderr.contains("decoding stopped; forwarding continues"), "\(tap.stderr)")
    }

    @Test(
        "a span queue that holds nothing drops every observation: spans_dropped_total is the pipeline's count, two per call"
    )
    func spansDroppedWhenTheQueueIsFull() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, unixAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { server.stop() }
        let metrics = TapMetrics()
        let (logger, log) = CapturingLogHandler.logger(level: .warning)
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: unixAddress), metrics: metrics,
            logger: logger, capacity: 0
        ) { tap in
            ProxyRuntime.registerGauges(metrics, proxy: tap.proxy, pipeline: tap.pipeline)
            let (endpoint, address) = try await Self.endpoint(metrics)
            let calls = 3
            for _ in 0..<calls {
                let result = try await EchoPeerTests.client(tap.address, "unary")
                #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
            }
            // Each call and each connection's end is one observation, and none fits in the queue.
            let text = try await Self.scrape(address, until: "\(2 * calls) dropped observations") {
                Self.value($0, "gitaly_tap_spans_dropped_total") == Double(2 * calls)
            }
            #expect(Self.value(text, "gitaly_tap_spans_dropped_total") == Double(tap.pipeline.currentCounts.dropped))
            #expect(Self.value(text, "gitaly_tap_spans_total") == 0)
            #expect(tap.sink.collected.isEmpty)
            // Dropped connections never reach the connection counters either.
            #expect(!text.contains("gitaly_tap_connections_total{"))
            let warnings = log.lines.filter { $0.contains("span queue full") }
            #expect(warnings.count == 1, "warned once: \(log.lines)")
            await endpoint.close()
        }
    }

    @Test(
        "sidechannel bytes of two git clones over the SSH-like path add up to what the Shell-like clients read and wrote"
    )
    func sidechannelBytes() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        _ = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        let metrics = TapMetrics()
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: .unix(path: dir.file("gitaly.sock")), metrics: metrics
        ) { _ in
            let (endpoint, address) = try await Self.endpoint(metrics)
            let idle = try MetricsTests.get(address, "/metrics").1
            #expect(Self.value(idle, "gitaly_tap_sidechannel_bytes_total{direction=\"to_client\"}") == 0)
            #expect(Self.value(idle, "gitaly_tap_sidechannel_bytes_total{direction=\"to_server\"}") == 0)
            let clones = 2
            for i in 1...clones {
                let ssh = GoPeers.sshCommand(
                    target: "unix:" + dir.file("tap.sock"), arguments: ["--stats", dir.file("shell.stats")])
                try await gitOK(
                    ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("clone-\(i)")],
                    environment: ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"])
            }
            let stats = GoPeers.jsonLines(dir.file("shell.stats"))
            #expect(stats.count == clones)
            let read = stats.map { $0["sidechannel_read"] as? Int ?? 0 }.reduce(0, +)
            let written = stats.map { $0["sidechannel_written"] as? Int ?? 0 }.reduce(0, +)
            // Each clone is one backchannel connection; its call is counted before the connection's end.
            let text = try await Self.scrape(address, until: "\(clones) backchannel connections closed") {
                Self.value($0, "gitaly_tap_connections_total{kind=\"backchannel\"}") == Double(clones)
            }
            #expect(read > 2_000_000, "two packs of over 1 MB each")
            #expect(written > 0)
            #expect(Self.value(text, "gitaly_tap_sidechannel_bytes_total{direction=\"to_client\"}") == Double(read))
            #expect(Self.value(text, "gitaly_tap_sidechannel_bytes_total{direction=\"to_server\"}") == Double(written))
            await endpoint.close()
        }
    }

    /// Runs `commands` (shell lines) with Trace2 sent to a stream socket of an in-process tap whose pipeline feeds
    /// `metrics`; returns the spans once the pipeline has finished.
    static func traceGit(_ commands: [String], processes: Int, in dir: TempDir, metrics: TapMetrics) async throws
        -> [Span]
    {
        let socket = dir.file("t2.sock")
        var options = Trace2Options()
        options.sockets = [Trace2SocketTarget(kind: .stream, path: socket)]
        let environment = [
            "GIT_TRACE2_EVENT": "af_unix:stream:\(socket)", "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
        ]
        // Returns after the pipeline's last flush: every span has reached every sink.
        return try await Trace2Harness.with(trace2: options, metrics: metrics) { h in
            for command in commands {
                let result = try await runCommand("/bin/sh", ["-c", command], environment: environment)
                #expect(result.status == 0, "\(command): \(result.stderr)")
            }
            try await h.wait("\(processes) processes") {
                h.collector.counts.processesFinished >= processes ? true : nil
            }
            #expect(h.collector.counts.processesFinished == processes)
            return h.sink
        }.collected
    }

    @Test("git process spans count the processes Trace2 reported, not their region, thread or child spans")
    func gitProcessSpans() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let repository = dir.file("repo")
        try await gitOK(["init", "-q", repository])
        try "text\n".write(toFile: repository + "/file.txt", atomically: true, encoding: .utf8)
        let metrics = TapMetrics()
        let (endpoint, address) = try await Self.endpoint(metrics)
        // `git status` reads the index and walks the worktree (regions); the shell alias starts two children.
        let commands = [
            "git -C \(repository) status", "git -C \(repository) status", "git -C \(repository) status",
            "git version", "git -C \(repository) -c alias.t='!true' t",
        ]
        let spans = try await Self.traceGit(commands, processes: commands.count, in: dir, metrics: metrics)
        let processSpans = spans.filter { $0.attributes["trace2.sid"] != nil }
        #expect(processSpans.count == commands.count, "\(spans.map(\.name))")
        #expect(spans.contains { $0.name.hasPrefix("child ") }, "\(spans.map(\.name))")
        #expect(spans.contains { $0.attributes["trace2.region.category"] != nil }, "\(spans.map(\.name))")
        let text = try MetricsTests.get(address, "/metrics").1
        #expect(Self.value(text, "gitaly_tap_git_process_spans_total") == Double(commands.count), "\(text)")
        await endpoint.close()
    }

    @Test("a git process without a subcommand (bare `git`, which prints its usage) counts as a git process span")
    func gitProcessWithoutSubcommand() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let metrics = TapMetrics()
        let (endpoint, address) = try await Self.endpoint(metrics)
        let spans = try await Self.traceGit(
            ["git > /dev/null 2>&1; test $? = 1", "git version"], processes: 2, in: dir, metrics: metrics)
        let bare = try #require(
            spans.first { $0.attributes["git.argv"] == .stringArray(["git"]) }, "\(spans.map(\.name))")
        #expect(bare.name == "git")
        let text = try MetricsTests.get(address, "/metrics").1
        #expect(Self.value(text, "gitaly_tap_git_process_spans_total") == 2, "\(text)")
        await endpoint.close()
    }
}

/// `grpc_type` of Gitaly's methods comes from Gitaly's protos, not from the first call's message counts.
@Suite("Metrics grpc_type")
struct MetricsGRPCTypeTests {
    static func span(service: String, method: String, requests: Int64, responses: Int64) -> Span {
        Span(
            traceID: TraceID(high: 1, low: 2), spanID: SpanID(3), name: "\(service)/\(method)", kind: .server,
            startTimeUnixNano: 10, endTimeUnixNano: 20,
            attributes: [
                "rpc.system": .string("grpc"), "rpc.service": .string(service), "rpc.method": .string(method),
                "rpc.grpc.status_code": .int(0), "rpc.grpc.request.messages": .int(requests),
                "rpc.grpc.response.messages": .int(responses),
            ])
    }

    @Test("a Gitaly streaming method answered with one message keeps its proto type (also services HGitaly lacks); an unknown method is learned")
    func typesFromProtos() {
        let metrics = TapMetrics()
        // GetBlob streams its answer; a small blob comes in one message.
        metrics.write(Self.span(service: "gitaly.BlobService", method: "GetBlob", requests: 1, responses: 1))
        // UserCommitFiles is client-streaming (a header message, then actions).
        metrics.write(Self.span(service: "gitaly.OperationService", method: "UserCommitFiles", requests: 1, responses: 1))
        metrics.write(Self.span(service: "gitaly.RepositoryService", method: "RepositoryExists", requests: 1, responses: 1))
        // A service HGitaly does not ship: the hooks Gitaly calls on itself are bidirectional streams.
        metrics.write(Self.span(service: "gitaly.HookService", method: "PreReceiveHook", requests: 1, responses: 1))
        metrics.write(Self.span(service: "other.Service", method: "Watch", requests: 1, responses: 1))
        metrics.write(Self.span(service: "other.Service", method: "Feed", requests: 1, responses: 3))
        let text = metrics.render()
        #expect(text.contains("grpc_method=\"GetBlob\",grpc_service=\"gitaly.BlobService\",grpc_type=\"server_stream\""))
        #expect(
            text.contains(
                "grpc_method=\"UserCommitFiles\",grpc_service=\"gitaly.OperationService\",grpc_type=\"client_stream\""))
        #expect(
            text.contains(
                "grpc_method=\"RepositoryExists\",grpc_service=\"gitaly.RepositoryService\",grpc_type=\"unary\""))
        #expect(
            text.contains("grpc_method=\"PreReceiveHook\",grpc_service=\"gitaly.HookService\",grpc_type=\"bidi_stream\""))
        #expect(text.contains("grpc_method=\"Watch\",grpc_service=\"other.Service\",grpc_type=\"unary\""))
        #expect(text.contains("grpc_method=\"Feed\",grpc_service=\"other.Service\",grpc_type=\"server_stream\""))
    }
}
