import Foundation
import TapServer
import Testing

/// Invariant 2: memory per connection stays bounded under a slow reader (backpressure, not buffering).
@Suite(.serialized)
struct SlowReaderTests {
    @Test("a client that stops reading while the upstream streams 512 MiB keeps the tap's memory bounded")
    func slowReaderKeepsMemoryBounded() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let total = 512 * 1024 * 1024
        // The upstream writes as fast as the tap lets it: 512 MiB of a repeating pattern.
        let upstream = try PeerProcess(
            "/usr/bin/socat",
            ["-b", "262144", "UNIX-LISTEN:\(dir.file("up.sock"))", "SYSTEM:head -c \(total) /dev/zero"],
            dir: dir, name: "up")
        defer { upstream.stop() }
        try await upstream.waitForFile(dir.file("up.sock"))
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            ["proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", "unix:" + dir.file("up.sock"),
             "--spans", dir.file("spans.jsonl"), "--log-level", "warning"],
            dir: dir, name: "tap")
        defer { tap.stop() }
        try await tap.waitForFile(dir.file("tap.sock"))
        let pid = tap.process.processIdentifier
        let baseline = residentKiB(pid: pid)

        let socket = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
        try socket.write(Array("hello, I will read later\n".utf8))
        // Do not read for a while: the upstream keeps pushing, the tap must stop reading it.
        var peakWhileStalled = baseline
        for _ in 0..<30 {
            try await Task.sleep(for: .milliseconds(100))
            peakWhileStalled = max(peakWhileStalled, residentKiB(pid: pid))
        }
        var peakWhileReading = peakWhileStalled
        var checked = 0
        let received = try socket.readToEnd { chunk in
            if chunk.contains(where: { $0 != 0 }) { checked = -1 }
            checked += chunk.count
            if checked % (32 * 1024 * 1024) < chunk.count {
                peakWhileReading = max(peakWhileReading, residentKiB(pid: pid))
            }
        }
        #expect(received == total, "received \(received) of \(total) bytes")
        #expect(checked == total, "payload bytes changed in transit")
        let growth = peakWhileStalled - baseline
        print("slow reader: tap RSS baseline \(baseline) KiB, stalled peak \(peakWhileStalled) KiB (+\(growth) KiB), reading peak \(peakWhileReading) KiB")
        // 512 MiB were offered; the tap may hold its write-buffer bound plus read buffers, not the stream.
        #expect(growth < 16 * 1024, "tap grew by \(growth) KiB while the client did not read")
        #expect(peakWhileReading - baseline < 32 * 1024, "tap grew by \(peakWhileReading - baseline) KiB while streaming")
    }
}
