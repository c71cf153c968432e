import Foundation
import TapServer
import TapTrace
import Testing

/// Invariant 1: bytes out == bytes in, in order, per direction, whatever the decoder makes of them.
/// socat's raw dumps (-r/-R) record what each side of the tap sent and received.
@Suite(.serialized)
struct ByteExactnessTests {
    /// A single-connection socat relay from `listen` to `connect` that dumps both directions.
    static func recorder(_ dir: TempDir, name: String, listen: String, connect: String) throws -> PeerProcess {
        try PeerProcess(
            "/usr/bin/socat",
            ["-r", dir.file("\(name).c2s"), "-R", dir.file("\(name).s2c"), "UNIX-LISTEN:\(listen)", "UNIX-CONNECT:\(connect)"],
            dir: dir, name: name)
    }

    @Test("bytes reaching the upstream equal the client's bytes, and back, for gRPC calls", arguments: ["unary_large", "bidi", "cancel", "error"])
    func grpcBytesAreForwardedUnchanged(scenario: String) async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, unixAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { server.stop() }
        try await TapHarness.with(listen: .unix(path: dir.file("tap.sock")), upstream: .unix(path: dir.file("b.sock"))) { tap in
            let inner = try Self.recorder(dir, name: "b", listen: dir.file("b.sock"), connect: String(unixAddress.dropFirst(5)))
            defer { inner.stop() }
            let outer = try Self.recorder(dir, name: "a", listen: dir.file("a.sock"), connect: dir.file("tap.sock"))
            defer { outer.stop() }
            try await outer.waitForFile(dir.file("a.sock"))
            try await inner.waitForFile(dir.file("b.sock"))
            let result = try await EchoPeerTests.client("unix:" + dir.file("a.sock"), scenario)
            #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
            try await tap.waitForSpans { $0.contains { $0.name.hasPrefix("taptest.Echo/") } }
            // socat exits once both ends closed; wait for the dumps to be complete.
            for relay in [outer, inner] {
                let deadline = Date().addingTimeInterval(10)
                while relay.process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            }
            let clientSent = try Data(contentsOf: URL(fileURLWithPath: dir.file("a.c2s")))
            let upstreamGot = try Data(contentsOf: URL(fileURLWithPath: dir.file("b.c2s")))
            let upstreamSent = try Data(contentsOf: URL(fileURLWithPath: dir.file("b.s2c")))
            let clientGot = try Data(contentsOf: URL(fileURLWithPath: dir.file("a.s2c")))
            #expect(clientSent.count > 0 && upstreamSent.count > 0)
            #expect(clientSent == upstreamGot, "client→server: \(clientSent.count) sent, \(upstreamGot.count) arrived")
            #expect(upstreamSent == clientGot, "server→client: \(upstreamSent.count) sent, \(clientGot.count) arrived")
        }
    }

    @Test("a connection that is not HTTP/2 is forwarded byte for byte and logged as a connection span")
    func opaqueConnectionIsForwardedUnchanged() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let echo = try PeerProcess("/usr/bin/socat", ["UNIX-LISTEN:\(dir.file("cat.sock")),fork", "EXEC:cat"], dir: dir, name: "cat")
        defer { echo.stop() }
        try await echo.waitForFile(dir.file("cat.sock"))
        try await TapHarness.with(listen: .unix(path: dir.file("tap.sock")), upstream: .unix(path: dir.file("b.sock"))) { tap in
            let inner = try Self.recorder(dir, name: "b", listen: dir.file("b.sock"), connect: dir.file("cat.sock"))
            defer { inner.stop() }
            try await inner.waitForFile(dir.file("b.sock"))
            var generator = SeededGenerator(seed: 42)
            let input = (0..<3_000_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let received: [UInt8] = try await Task {
                let socket = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
                var got: [UInt8] = []
                got.reserveCapacity(input.count)
                let writer = Thread {
                    try? socket.write(input)
                    socket.shutdownWrite()
                }
                writer.start()
                _ = try socket.readToEnd { got += $0 }
                return got
            }.value
            #expect(received.count == input.count)
            #expect(received == input, "echoed bytes differ")
            let deadline = Date().addingTimeInterval(10)
            while inner.process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            let upstreamGot = try Data(contentsOf: URL(fileURLWithPath: dir.file("b.c2s")))
            #expect(upstreamGot == Data(input))
            let spans = try await tap.waitForSpans { $0.contains { $0.name == "gitaly-tap/connection" } }
            let span = try #require(spans.first { $0.name == "gitaly-tap/connection" })
            #expect(span.attributes["tap.connection.kind"] == .string("opaque"))
            #expect(span.attributes["tap.connection.bytes_to_server"] == .int(Int64(input.count)))
            #expect(span.attributes["tap.connection.bytes_to_client"] == .int(Int64(input.count)))
        }
    }
}

/// A small deterministic generator (SplitMix64) so random inputs repeat from run to run.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
