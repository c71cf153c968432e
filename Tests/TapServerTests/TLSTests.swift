import Foundation
import TapServer
import TapTrace
import Testing

/// TLS on both sides of the tap with the development CA in `Certs/`, and each way a handshake goes wrong.
@Suite(.serialized)
struct TLSTests {
    static func cert(_ name: String) -> String { Peers.repo.appendingPathComponent("Certs/\(name)").path }

    /// A grpcio echo server on `tls://127.0.0.1:PORT` presenting `certificate`; returns it and its address.
    static func startTLSEcho(in dir: TempDir, certificate: String = "server") async throws -> (PeerProcess, String) {
        try Peers.requirePython()
        let server = try PeerProcess(
            Peers.python,
            [
                Peers.script("echo_server.py"), "--listen", "tls://127.0.0.1:0", "--listen", "unix:" + dir.file("echo.sock"),
                "--tls-cert", cert("\(certificate).pem"), "--tls-key", cert("\(certificate)-key.pem"),
            ],
            dir: dir, name: "echo-tls")
        let ready = try await server.waitReady()
        let json = try JSONSerialization.jsonObject(with: Data(ready.dropFirst("READY ".count).utf8)) as! [String: Any]
        let address = try #require((json["listen"] as! [String]).first { $0.hasPrefix("tls://") })
        return (server, address)
    }

    static func client(_ target: String, _ scenario: String, _ extra: [String]) async throws -> CommandResult {
        try await runCommand(
            Peers.python, [Peers.script("echo_client.py"), "--target", target, "--scenario", scenario] + extra)
    }

    static func tapTLS(upstreamCA: String = "ca.pem") -> TLSSettings {
        var tls = TLSSettings()
        tls.certificatePath = cert("server.pem")
        tls.keyPath = cert("server-key.pem")
        tls.upstreamCAPath = cert(upstreamCA)
        return tls
    }

    @Test("TLS on both sides: clients see the tap's certificate, the tap verifies Gitaly's, calls and spans as in plaintext")
    func tlsBothSides() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, upstream) = try await Self.startTLSEcho(in: dir)
        defer { server.stop() }
        let clientTLS = ["--tls-ca", Self.cert("ca.pem"), "--tls-server-name", "localhost"]
        try await TapHarness.with(
            listen: .tls(host: "127.0.0.1", port: 0), upstream: try TapAddress(parsing: upstream), tls: Self.tapTLS()
        ) { tap in
            #expect(tap.address.hasPrefix("tls://"))
            for scenario in ["unary", "unary_large", "server_stream", "client_stream", "bidi", "error", "trailers_only"] {
                let id = "tls-\(scenario)"
                let direct = try await Self.client(upstream, scenario, clientTLS + ["--correlation-id", id + "-direct"])
                let tapped = try await Self.client(tap.address, scenario, clientTLS + ["--correlation-id", id])
                #expect(direct.status == 0, "\(scenario) direct: \(direct.stdout) \(direct.stderr)")
                #expect(tapped.status == 0, "\(scenario) via tap: \(tapped.stdout) \(tapped.stderr)")
                #expect(tapped.stdout == direct.stdout, "\(scenario): answers differ through the TLS tap")
            }
            let spans = try await tap.waitForSpans("a span per call") { spans in
                spans.contains { $0.attributes["gitlab.correlation_id"] == .string("tls-trailers_only") }
            }
            let unary = try #require(spans.first { $0.attributes["gitlab.correlation_id"] == .string("tls-unary") })
            #expect(unary.name == "taptest.Echo/Unary")
            #expect(unary.attributes["rpc.grpc.status_code"] == .int(0))
            let large = try #require(spans.first { $0.attributes["gitlab.correlation_id"] == .string("tls-unary_large") })
            #expect(large.attributes["rpc.grpc.request.bytes"]?.intValue ?? 0 >= 5 << 20, "\(large.attributes)")
            let error = try #require(spans.first { $0.attributes["gitlab.correlation_id"] == .string("tls-error") })
            #expect(error.attributes["rpc.grpc.status_code"] == .int(3))
            #expect(spans.allSatisfy { $0.attributes["authorization"] == nil })
        }
    }

    @Test("a TLS listener in front of a plaintext unix Gitaly")
    func tlsTermination() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, _) = try await Self.startTLSEcho(in: dir)
        defer { server.stop() }
        try await TapHarness.with(
            listen: .tls(host: "127.0.0.1", port: 0), upstream: .unix(path: dir.file("echo.sock")), tls: Self.tapTLS()
        ) { tap in
            let result = try await Self.client(
                tap.address, "all", ["--tls-ca", Self.cert("ca.pem"), "--tls-server-name", "localhost"])
            #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
            try await tap.waitForSpans("ten calls") { $0.filter { $0.name.hasPrefix("taptest.Echo/") }.count >= 10 }
        }
    }

    /// Each way a handshake fails: what the upstream presents or the tap trusts, what the client does, and the
    /// words the log line must carry.
    static let failures: [(name: String, upstreamCertificate: String, tapTrusts: String, plaintextClient: Bool, side: String, hint: String)] = [
        ("certificate from an unknown CA", "server", "other-ca.pem", false, "upstream", "not trusted"),
        ("hostname mismatch", "wronghost", "ca.pem", false, "upstream", "is for another name"),
        ("expired certificate", "expired", "ca.pem", false, "upstream", "certificate expired on"),
        ("plaintext client on a TLS port", "server", "ca.pem", true, "client", "plaintext"),
        // The client trusts another CA than the one that signed the tap's certificate.
        ("client refuses the tap's certificate", "server", "ca.pem", false, "client", "does not trust the tap's certificate"),
    ]

    @Test("a failed handshake is one clear log line and a closed connection; the tap keeps serving", arguments: 0..<5)
    func handshakeFailures(index: Int) async throws {
        let failure = Self.failures[index]
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, upstream) = try await Self.startTLSEcho(in: dir, certificate: failure.upstreamCertificate)
        defer { server.stop() }
        let (logger, log) = CapturingLogHandler.logger()
        try await TapHarness.with(
            listen: .tls(host: "127.0.0.1", port: 0), upstream: try TapAddress(parsing: upstream),
            tls: Self.tapTLS(upstreamCA: failure.tapTrusts), logger: logger
        ) { tap in
            let clientCA = failure.side == "client" && !failure.plaintextClient ? "other-ca.pem" : "ca.pem"
            let clientArgs = failure.plaintextClient ? [] : ["--tls-ca", Self.cert(clientCA), "--tls-server-name", "localhost"]
            let target = failure.plaintextClient ? tap.address.replacing("tls://", with: "tcp://") : tap.address
            let result = try await Self.client(target, "unary", clientArgs)
            #expect(result.status != 0, "\(failure.name): the call must fail: \(result.stdout)")
            #expect(result.stdout.contains("UNAVAILABLE"), "\(failure.name): \(result.stdout) \(result.stderr)")
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline, !log.lines.contains(where: { $0.contains("TLS handshake with the \(failure.side) failed") }) {
                try await Task.sleep(for: .milliseconds(20))
            }
            // A client that exits closes its pending retry mid-handshake: that line is allowed, and says so.
            // (A client refusing the tap's certificate closes without an alert: there that line is the failure.)
            let refusal = failure.name.contains("refuses")
            let lines = log.lines.filter {
                $0.contains("TLS handshake") && (refusal || !$0.contains("closed the connection during the TLS handshake"))
            }
            // gRPC clients retry, so there may be several connections: each logs exactly one line, about the side
            // that failed, with the hint.
            let connections = log.all.filter { $0.message.contains("TLS handshake") }.map { $0.metadata["connection"] ?? "?" }
            #expect(!lines.isEmpty && Set(connections).count == connections.count, "\(failure.name): \(lines)")
            #expect(
                lines.allSatisfy { $0.contains("TLS handshake with the \(failure.side) failed") && $0.lowercased().contains(failure.hint) },
                "\(failure.name): \(lines)")
            // The failed connection is closed and the tap still listens.
            let closedBy = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < closedBy, tap.proxy.openConnections > 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(tap.proxy.openConnections == 0)
            #expect(tap.proxy.isListening)
        }
    }

    @Test(
        "a client that half-closes during its TLS handshake, while Gitaly's handshake is still running, neither crashes the tap nor stops it"
    )
    func halfCloseDuringUpstreamHandshake() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let port = try freeTCPPort()
        // A TLS upstream that takes 1 s before its handshake, echoes, and never closes first (it holds each
        // connection 15 s): the tap's close_notify to it stays unanswered past swift-nio-ssl's 5 s shutdown timeout.
        let upstream = """
            import socket, ssl, sys, threading, time
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(sys.argv[2], sys.argv[3])
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", int(sys.argv[1])))
            srv.listen(16)
            def serve(c):
                time.sleep(1)
                try:
                    s = ctx.wrap_socket(c, server_side=True)
                    while True:
                        data = s.recv(65536)
                        if not data: break
                        s.sendall(data)
                    s.sendall(b"<eof>")  # the client's half-close arrived
                except Exception:
                    pass
                time.sleep(15)
            while True:
                c, _ = srv.accept()
                threading.Thread(target=serve, args=(c,), daemon=True).start()
            """
        let server = try PeerProcess(
            Peers.python, ["-c", upstream, String(port), Self.cert("server.pem"), Self.cert("server-key.pem")],
            dir: dir, name: "slow-tls-upstream")
        defer { server.stop() }
        try await waitForTCP(port: port)
        try await TapHarness.with(
            listen: .tls(host: "127.0.0.1", port: 0), upstream: .tls(host: "localhost", port: port), tls: Self.tapTLS()
        ) { tap in
            let tapPort = String(tap.address.split(separator: ":").last!)
            // Connect and half-close before saying anything: the tap's TLS handshake with the client fails on the
            // EOF while its handshake with the upstream is still waiting. Before the fix, the half-close then the
            // close passed on to the upstream side left a shutdown timer armed that trapped 5 s later.
            let halfClose = """
                import socket, sys
                for _ in range(3):
                    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(20)
                    while s.recv(65536): pass
                    s.close()
                print("closed")
                """
            let first = try await runCommand(Peers.python, ["-c", halfClose, tapPort])
            #expect(first.stdout.contains("closed"), "\(first.stdout) \(first.stderr)")
            // Past the 5 s timeout, plus the upstream's 1 s: the process is still here (a trap would end it) and
            // still forwards over TLS both ways.
            try await Task.sleep(for: .seconds(8))
            #expect(tap.proxy.isListening)
            let echo = """
                import socket, ssl, sys
                ctx = ssl.create_default_context(cafile=sys.argv[1])
                s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="localhost")
                s.sendall(b"ping")
                s.settimeout(20)
                print("echoed" if s.recv(4) == b"ping" else "differ")
                """
            let second = try await runCommand(Peers.python, ["-c", echo, Self.cert("ca.pem"), tapPort])
            #expect(second.stdout.contains("echoed"), "\(second.stdout) \(second.stderr)")
        }
        // A plaintext client half-closing while the tap's handshake with Gitaly runs: the half-close now waits for
        // the handshake, and then reaches Gitaly after the bytes.
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: .tls(host: "localhost", port: port), tls: Self.tapTLS()
        ) { tap in
            let halfClose = """
                import socket, sys
                s = socket.socket(socket.AF_UNIX)
                s.connect(sys.argv[1])
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                s.settimeout(20)
                got = b""
                while not got.endswith(b"<eof>"):
                    chunk = s.recv(65536)
                    if not chunk: break
                    got += chunk
                print(got.decode())
                """
            let result = try await runCommand(Peers.python, ["-c", halfClose, dir.file("tap.sock")])
            #expect(result.stdout.contains("ping<eof>"), "\(result.stdout) \(result.stderr)")
        }
    }

    @Test("the backchannel magic inside TLS is recognised, and the bytes pass unchanged")
    func backchannelInsideTLS() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let port = try freeTCPPort()
        let echo = try PeerProcess(
            "/usr/bin/socat",
            [
                "OPENSSL-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork,cert=\(Self.cert("server.pem")),key=\(Self.cert("server-key.pem")),verify=0",
                "EXEC:cat",
            ], dir: dir, name: "tls-cat")
        defer { echo.stop() }
        try await waitForTCP(port: port)
        try await TapHarness.with(
            listen: .tls(host: "127.0.0.1", port: 0), upstream: .tls(host: "localhost", port: port), tls: Self.tapTLS()
        ) { tap in
            let tapPort = tap.address.split(separator: ":").last!
            // `backchannel`, a yamux SYN (window update, stream 1), then 200 kB of a data frame's worth of bytes.
            let script = """
                import socket, ssl, sys
                ctx = ssl.create_default_context(cafile=sys.argv[1])
                s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="localhost")
                body = bytes(i % 251 for i in range(200000))
                data = b"backchannel" + bytes([0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]) + bytes([0, 0, 0, 0, 0, 0, 0, 1]) + len(body).to_bytes(4, "big") + body
                s.sendall(data)
                got = b""
                while len(got) < len(data):
                    chunk = s.recv(65536)
                    if not chunk: break
                    got += chunk
                s.close()
                print("echoed" if got == data else "differ %d/%d" % (len(got), len(data)))
                """
            let result = try await runCommand(Peers.python, ["-c", script, Self.cert("ca.pem"), String(tapPort)])
            #expect(result.stdout.contains("echoed"), "\(result.stdout) \(result.stderr)")
            let spans = try await tap.waitForSpans { $0.contains { $0.name == "gitaly-tap/connection" } }
            let span = try #require(spans.first { $0.name == "gitaly-tap/connection" })
            #expect(span.attributes["tap.connection.kind"] == .string("backchannel"), "\(span.attributes)")
            #expect(span.attributes["tap.connection.bytes_to_server"] == .int(11 + 12 + 12 + 200_000))
        }
    }
}

/// A TCP port that was free a moment ago (for peers that cannot report the port they bound).
func freeTCPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw PeerError("socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    guard bound == 0 else { throw PeerError("bind failed") }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
func waitForTCP(port: Int, timeout: Duration = .seconds(20)) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? RawSocket(connectingTo: "tcp://127.0.0.1:\(port)")) != nil { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw PeerError("nothing listens on 127.0.0.1:\(port)")
}
