import Foundation
import TapServer
import Testing

/// `gitaly-tap demo`, run as a user would run it.
@Suite(.serialized)
struct DemoCommandTests {
    @Test("gitaly-tap demo clones over both transports and prints one tree per trace with the sidechannel figures")
    func demoPrintsTraceTrees() async throws {
        try GoPeers.require()
        let result = try await runCommand(try Peers.tapExecutable(), ["demo", "--peer", GoPeers.binary])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let out = result.stdout
        #expect(out.contains("[1/2] git clone ssh://git@gitaly/group/demo.git"))
        #expect(out.contains("[2/2] git clone http://127.0.0.1:"))
        #expect(out.components(separatedBy: "      done: 3 commits, pack ").count == 3, "\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        // The SSH trace: its header, then the one RPC with its sidechannel line under it.
        let ssh = try #require(
            lines.firstIndex { $0.hasPrefix("trace ") && $0.hasSuffix("correlation_id demo-ssh-clone") }, "\(out)")
        #expect(lines[ssh + 1].hasPrefix("└─ gitaly.SSHService/SSHUploadPackWithSidechannel  "), "\(out)")
        #expect(lines[ssh + 1].contains("  OK  client gitlab-shell-git-upload-pack, repo group/demo.git"))
        #expect(lines[ssh + 2].contains("sidechannel #1: ") && lines[ssh + 2].contains("(stdout "), "\(out)")
        // The HTTP trace: InfoRefs, then one PostUploadPackWithSidechannel per git request, each with its sidechannel.
        let http = try #require(
            lines.firstIndex { $0.hasPrefix("trace ") && $0.hasSuffix("correlation_id demo-http-clone") }, "\(out)")
        #expect(lines[http + 1].hasPrefix("├─ gitaly.SmartHTTPService/InfoRefsUploadPack  "), "\(out)")
        let posts = lines[(http + 1)...].prefix { !$0.isEmpty }.filter { $0.contains("PostUploadPackWithSidechannel") }
        let sidechannels = lines[(http + 1)...].prefix { !$0.isEmpty }.filter { $0.contains("sidechannel #") }
        #expect(posts.count >= 1 && posts.count == sidechannels.count, "\(out)")
        #expect(sidechannels.contains { $0.contains("(pack ") && !$0.contains("(pack 0 B") }, "\(out)")
        #expect(out.contains("Connections:\n  backchannel: "))
        // The scratch directory is gone afterwards.
        let scratch = try #require(lines.first { $0.hasPrefix("  scratch ") }?.split(separator: " ").dropFirst().first)
        #expect(!FileManager.default.fileExists(atPath: String(scratch)))
    }

    @Test("gitaly-tap demo without the Go peers says what to run, in one line, and fails")
    func demoWithoutPeers() async throws {
        let result = try await runCommand(try Peers.tapExecutable(), ["demo", "--peer", "/nonexistent/gitaly-peer"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("run scripts/install-peers.sh"), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stdout.isEmpty)
    }

    @Test("the peer is looked for in the environment, the working directory, then above the executable")
    func peerCandidates() {
        let candidates = DemoRunner.peerCandidates(
            explicit: nil, environment: ["GITALY_TAP_GO_PEER": "/opt/p/gitaly-peer"], workingDirectory: "/src/repo",
            executable: "/src/repo/.build/x86_64-unknown-linux-gnu/debug/gitaly-tap")
        #expect(candidates.prefix(2) == ["/opt/p/gitaly-peer", "/src/repo/.peers/bin/gitaly-peer"])
        #expect(candidates.contains("/src/repo/.build/x86_64-unknown-linux-gnu/debug/.peers/bin/gitaly-peer"))
        #expect(
            DemoRunner.peerCandidates(explicit: "/x", environment: [:], workingDirectory: "/", executable: "/y") == [
                "/x"
            ])
    }
}
