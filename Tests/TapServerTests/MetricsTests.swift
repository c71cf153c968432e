import Foundation
import Logging
import NIOPosix
import TapServer
import Testing

/// `--metrics`: Prometheus text with Gitaly's gRPC metric names, matching the calls made.
@Suite(.serialized)
struct MetricsTests {
    /// GET `path` over HTTP/1.1 with a raw socket; returns (status line, body).
    static func get(_ port: Int, _ path: String) throws -> (String, String) {
        try get("tcp://127.0.0.1:\(port)", path)
    }

    /// GET `path` from the endpoint at `address` (`tcp://127.0.0.1:port` or `unix:/path`).
    static func get(_ address: String, _ path: String) throws -> (String, String) {
        let socket = try RawSocket(connectingTo: address)
        try socket.write(Array("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        var bytes: [UInt8] = []
        _ = try socket.readToEnd(timeout: 10) { bytes += $0 }
        let text = String(decoding: bytes, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        return (parts[0].components(separatedBy: "\r\n")[0], parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    static func value(_ metrics: String, _ prefix: String) -> Double? {
        for line in metrics.split(separator: "\n") where line.hasPrefix(prefix) {
            return Double(line.split(separator: " ").last!)
        }
        return nil
    }

    @Test("metrics count calls by service, method and code, with latency histograms, bytes and connections")
    func metricsMatchTheCallsMade() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, unixAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { server.stop() }
        let metrics = TapMetrics()
        var logger = Logger(label: "metrics-test")
        logger.logLevel = .warning
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: unixAddress), metrics: metrics
        ) { tap in
            let endpoint = try await MetricsServer(
                address: .tcp(host: "127.0.0.1", port: 0), metrics: metrics, group: MultiThreadedEventLoopGroup.singleton,
                logger: logger, healthy: { tap.proxy.isListening })
            let port = try #require(endpoint.port)
            #expect(try Self.get(port, "/health").0.contains("200"))
            for scenario in ["unary", "unary", "unary", "error", "trailers_only", "server_stream"] {
                let result = try await EchoPeerTests.client(tap.address, scenario)
                #expect(result.status == 0)
            }
            try await tap.waitForSpans { $0.filter { $0.name.hasPrefix("taptest.") }.count >= 6 }
            // Connections are counted when they close; wait for all six.
            let deadline = ContinuousClock.now + .seconds(10)
            var text = ""
            while ContinuousClock.now < deadline {
                text = try Self.get(port, "/metrics").1
                if Self.value(text, "gitaly_tap_connections_total{kind=\"http2\"}") == 6 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let unary = "grpc_method=\"Unary\",grpc_service=\"taptest.Echo\",grpc_type=\"unary\""
            let stream = "grpc_method=\"ServerStream\",grpc_service=\"taptest.Echo\",grpc_type=\"server_stream\""
            #expect(Self.value(text, "grpc_server_handled_total{grpc_code=\"OK\",\(unary)}") == 3, "\(text)")
            #expect(Self.value(text, "grpc_server_handled_total{grpc_code=\"NotFound\",\(unary)}") == 1)
            #expect(Self.value(text, "grpc_server_handled_total{grpc_code=\"InvalidArgument\",\(stream)}") == 1)
            #expect(Self.value(text, "grpc_server_handled_total{grpc_code=\"OK\",\(stream)}") == 1)
            #expect(Self.value(text, "grpc_server_started_total{\(unary)}") == 4)
            #expect(Self.value(text, "grpc_server_handling_seconds_count{\(unary)}") == 4)
            #expect(Self.value(text, "grpc_server_handling_seconds_bucket{\(unary),le=\"+Inf\"}") == 4)
            #expect(Self.value(text, "grpc_server_msg_sent_total{\(stream)}") == 201)
            #expect(Self.value(text, "gitaly_tap_connections_total{kind=\"http2\"}") == 6)
            #expect((Self.value(text, "gitaly_tap_forwarded_bytes_total{direction=\"to_client\"}") ?? 0) > 200 * 32 * 1024)
            #expect(text.contains("# TYPE grpc_server_handling_seconds histogram"))
            #expect(try Self.get(port, "/nope").0.contains("404"))
            await endpoint.close()
        }
    }

    @Test("open connections are counted by kind while they are open")
    func openConnectionsByKind() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, unixAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { server.stop() }
        try await TapHarness.with(listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: unixAddress)) { tap in
            func waitFor(_ expected: [String: Int]) async throws {
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < deadline {
                    if tap.proxy.openConnectionsByKind.filter({ $0.value != 0 }) == expected { return }
                    try await Task.sleep(for: .milliseconds(20))
                }
                Issue.record("open connections by kind: \(tap.proxy.openConnectionsByKind), expected \(expected)")
            }
            var silent: RawSocket? = try RawSocket(connectingTo: tap.address)
            try await waitFor(["undetermined": 1])
            var h2: RawSocket? = try RawSocket(connectingTo: tap.address)
            // The client preface and an empty SETTINGS frame.
            try h2!.write(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0])
            try await waitFor(["undetermined": 1, "http2": 1])
            // Closing the descriptors (deinit) ends both connections.
            silent = nil
            h2 = nil
            _ = (silent, h2)
            try await waitFor([:])
        }
    }

    @Test("/health answers 200 while the tap accepts connections and 503 while it drains after SIGTERM")
    func healthDuringDrain() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, tap) = try await ShutdownTests.start(in: dir, drainTimeout: 60)
        defer {
            tap.stop()
            echo.stop()
        }
        let endpoint = "unix:" + dir.file("metrics.sock")
        // An idle HTTP/2 connection (preface and SETTINGS, then nothing): the upstream keeps it open, so the drain
        // waits for it.
        var idle: RawSocket? = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
        try idle!.write(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0])
        try await ShutdownTests.waitForOpenHTTP2(dir)
        let serving = try Self.get(endpoint, "/health")
        #expect(serving.0 == "HTTP/1.1 200 OK")
        #expect(serving.1 == "ok\n")

        tap.signal(SIGTERM)
        var draining = serving
        let deadline = ContinuousClock.now + .seconds(20)
        while draining.0 == serving.0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            draining = try Self.get(endpoint, "/health")
        }
        #expect(draining.0 == "HTTP/1.1 503 Service Unavailable")
        #expect(draining.1 == "not serving\n")
        // Still draining, not gone: the process runs and the idle connection is still open through it.
        #expect(!tap.exited)
        let metrics = try Self.get(endpoint, "/metrics").1
        #expect(Self.value(metrics, "gitaly_tap_connections_open{kind=\"http2\"}") == 1, "\(metrics)")
        #expect(try Self.get(endpoint, "/health").0 == "HTTP/1.1 503 Service Unavailable")

        // With the last connection gone the drain ends before its timeout and the process exits cleanly.
        idle = nil
        _ = idle
        _ = try await ShutdownTests.waitExit(tap, timeout: .seconds(120))
        #expect(tap.process.terminationStatus == 0, "\(tap.stderr)")
        #expect(!tap.stderr.contains("drain timeout"), "\(tap.stderr)")
    }
}
