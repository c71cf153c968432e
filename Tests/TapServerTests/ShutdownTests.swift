import Foundation
import Synchronization
import TapServer
import Testing

/// The `gitaly-tap` process under SIGTERM/SIGINT: stop accepting, let open calls finish within the drain timeout,
/// flush spans, exit 0; a second signal exits at once.
@Suite(.serialized)
struct ShutdownTests {
    /// Starts the echo server and the tap executable in front of it; the tap writes spans to `spans.jsonl`.
    static func start(in dir: TempDir, drainTimeout: Int) async throws -> (echo: PeerProcess, tap: PeerProcess) {
        let (echo, unixAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", unixAddress, "--spans",
                dir.file("spans.jsonl"), "--drain-timeout", String(drainTimeout), "--log-format", "json",
                "--metrics", "unix:" + dir.file("metrics.sock"),
            ], dir: dir, name: "tap")
        try await tap.waitForFile(dir.file("tap.sock"))
        return (echo, tap)
    }

    /// Starts the 8-second stream and waits until its connection is open through the tap.
    static func startSlowStream(_ dir: TempDir, correlationID: String) async throws -> Task<CommandResult, Error> {
        let finished = Mutex(false)
        let client = Task {
            defer { finished.withLock { $0 = true } }
            return try await EchoPeerTests.client(
                "unix:" + dir.file("tap.sock"), "slow_stream", ["--correlation-id", correlationID, "--timing"])
        }
        // Wait until the client's HTTP/2 connection is open through the tap (the tap's metrics say so): the call
        // follows on it at once, and the connection stays open until the 8 s stream has ended.
        do {
            try await waitForOpenHTTP2(dir) { finished.withLock { $0 } }
        } catch {
            let result = try? await client.value
            throw PeerError("\(error); client: \(result.map { "\($0.status) \($0.stdout) \($0.stderr)" } ?? "failed")")
        }
        return client
    }

    /// Waits until the tap's metrics show an open HTTP/2 connection.
    static func waitForOpenHTTP2(_ dir: TempDir, stopIf gaveUp: () -> Bool = { false }) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline, !gaveUp() {
            let socket = try? RawSocket(connectingTo: "unix:" + dir.file("metrics.sock"))
            if let socket {
                try socket.write(Array("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
                var bytes: [UInt8] = []
                _ = try? socket.readToEnd(timeout: 5) { bytes += $0 }
                let text = String(decoding: bytes, as: UTF8.self)
                let prefix = "gitaly_tap_connections_open{kind=\"http2\"} "
                let open = text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Int($0.dropFirst(prefix.count)) }
                if let open, open > 0 { return }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw PeerError("the client's connection was not seen open through the tap")
    }

    static func waitExit(_ process: PeerProcess, timeout: Duration) async throws -> Duration {
        let start = ContinuousClock.now
        while !process.exited {
            if ContinuousClock.now - start > timeout { throw PeerError("the tap did not exit within \(timeout): \(process.stderr)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.process.waitUntilExit()
        return ContinuousClock.now - start
    }

    static func spans(_ dir: TempDir) throws -> [[String: Any]] {
        let text = (try? String(contentsOfFile: dir.file("spans.jsonl"), encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }

    static func correlationID(_ span: [String: Any]) -> String? {
        (span["attributes"] as? [String: Any])?["gitlab.correlation_id"] as? String
    }

    @Test("SIGTERM during a long stream: no new connections, the stream completes, spans flushed, exit 0", arguments: [SIGTERM, SIGINT])
    func gracefulShutdown(signal: Int32) async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, tap) = try await Self.start(in: dir, drainTimeout: 20)
        defer {
            tap.stop()
            echo.stop()
        }
        let stream = try await Self.startSlowStream(dir, correlationID: "drain-\(signal)")
        tap.signal(signal)
        // The listener closes at once: its socket file goes and new clients are refused.
        let refusedBy = ContinuousClock.now + .seconds(5)
        while FileManager.default.fileExists(atPath: dir.file("tap.sock")), ContinuousClock.now < refusedBy {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("tap.sock")), "the listening socket is removed")
        #expect((try? RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))) == nil, "new connections are refused")
        let result = try await stream.value
        #expect(result.status == 0, "the open stream completes through the draining tap: \(result.stdout) \(result.stderr)")
        _ = try await Self.waitExit(tap, timeout: .seconds(20))
        #expect(tap.process.terminationStatus == 0, "\(tap.stderr)")
        let span = try #require(try Self.spans(dir).first { Self.correlationID($0) == "drain-\(signal)" }, "span flushed")
        #expect(span["name"] as? String == "taptest.Echo/ServerStream")
        #expect((span["status"] as? [String: Any])?["code"] as? String == "ok")
        #expect(tap.stderr.contains("draining"), "the log says what is happening: \(tap.stderr)")
    }

    @Test("a stream longer than the drain timeout is cut at the timeout; its span is still written; exit 0")
    func drainTimeoutCutsLongCalls() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, tap) = try await Self.start(in: dir, drainTimeout: 1)
        defer {
            tap.stop()
            echo.stop()
        }
        let stream = try await Self.startSlowStream(dir, correlationID: "cut-by-drain-7")
        tap.signal(SIGTERM)
        _ = try await Self.waitExit(tap, timeout: .seconds(10))
        #expect(tap.process.terminationStatus == 0, "\(tap.stderr)")
        let result = try await stream.value
        #expect(result.status != 0, "the stream was cut: \(result.stdout)")
        let span = try #require(try Self.spans(dir).first { Self.correlationID($0) == "cut-by-drain-7" }, "span flushed")
        #expect((span["status"] as? [String: Any])?["code"] as? String == "error")
        #expect(tap.stderr.contains("drain timeout"), "\(tap.stderr)")
        // The cut call is named in the log with its correlation id.
        let line = tap.stderr.split(separator: "\n").first { $0.contains("calls in flight") }
        #expect(line?.contains("cut-by-drain-7") == true, "\(tap.stderr)")
    }

    @Test("a second signal exits at once, without waiting for the drain")
    func secondSignalExitsAtOnce() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, tap) = try await Self.start(in: dir, drainTimeout: 30)
        defer {
            tap.stop()
            echo.stop()
        }
        // An idle HTTP/2 connection (preface and SETTINGS, then nothing): gRPC servers keep it open, so the drain
        // would last the whole 30 s.
        let idle = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
        try idle.write(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0])
        try await Self.waitForOpenHTTP2(dir)
        tap.signal(SIGTERM)
        let draining = ContinuousClock.now + .seconds(10)
        while !tap.stderr.contains("draining"), ContinuousClock.now < draining { try await Task.sleep(for: .milliseconds(20)) }
        #expect(!tap.exited, "still draining after the first signal")
        tap.signal(SIGTERM)
        // Far sooner than the 30 s drain.
        _ = try await Self.waitExit(tap, timeout: .seconds(10))
        #expect(tap.process.terminationStatus != 0, "an interrupted drain is not a clean exit")
        #expect(tap.stderr.contains("second signal"), "\(tap.stderr)")
        _ = idle
    }
}
