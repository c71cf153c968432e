import Foundation
import TapServer
import TapTrace
import Testing

/// HGitaly 18.8.3, a real third-party Gitaly-protocol server, with its own shipped stubs, through the tap.
@Suite(.serialized)
struct HGitalyTests {
    static let calls = [
        "RepositoryExists", "FindDefaultBranchName", "FindAllBranches", "GetArchive", "RepositorySize", "FindCommits",
        "ListFiles", "CountCommits", "FindLocalBranches", "FindAllTags", "RefExists", "FindBranch",
        "MissingRepoDefaultBranch", "HasLocalBranches",
    ]

    @Test("HGitaly answers identically through the tap on unix and TCP, one span per call with the repository")
    func hgitalyThroughTheTap() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let server = try PeerProcess(
            Peers.python,
            [Peers.script("hgitaly_serve.py"), "--setup", "--root", dir.file("repos"),
             "--listen", "unix:" + dir.file("hg.sock"), "--listen", "tcp://127.0.0.1:0"],
            dir: dir, name: "hgitaly")
        defer { server.stop() }
        let ready = try await server.waitReady(timeout: .seconds(120))
        let json = try JSONSerialization.jsonObject(with: Data(ready.dropFirst("READY ".count).utf8)) as! [String: Any]
        let tcp = try #require((json["listen"] as! [String]).first { $0.hasPrefix("tcp://") })

        for (transport, upstream, listen) in [
            ("unix", "unix:" + dir.file("hg.sock"), TapAddress.unix(path: dir.file("tap.sock"))),
            ("tcp", tcp, TapAddress.tcp(host: "127.0.0.1", port: 0)),
        ] {
            try await TapHarness.with(listen: listen, upstream: try TapAddress(parsing: upstream)) { tap in
                let id = "hgitaly-\(transport)"
                let args = ["--calls", Self.calls.joined(separator: ","), "--correlation-id", id]
                let direct = try await runCommand(Peers.python, [Peers.script("hgitaly_client.py"), "--target", upstream] + args)
                let tapped = try await runCommand(Peers.python, [Peers.script("hgitaly_client.py"), "--target", tap.address] + args)
                #expect(direct.status == 0, "\(direct.stdout)\n\(direct.stderr)")
                #expect(tapped.status == 0, "\(tapped.stdout)\n\(tapped.stderr)")
                #expect(tapped.stdout == direct.stdout, "HGitaly answers differ through the tap")
                let results = tapped.stdout.split(separator: "\n").compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
                #expect(results.count == Self.calls.count)
                let archive = try #require(results.first { $0["call"] as? String == "GetArchive" })
                #expect((archive["bytes"] as? Int ?? 0) >= 16 * 1024 * 1024)

                let spans = try await tap.waitForSpans("\(Self.calls.count) HGitaly spans") {
                    $0.filter { $0.attributes["gitlab.correlation_id"] == .string(id) }.count >= Self.calls.count
                }
                try await Task.sleep(for: .milliseconds(200))
                let mine = tap.spans(correlationID: id)
                #expect(mine.count == Self.calls.count, "\(mine.map(\.name))")
                for result in results {
                    let method = try #require(result["method"] as? String)
                    let name = String(method.dropFirst())
                    let candidates = mine.filter { $0.name == name }
                    #expect(!candidates.isEmpty, "no span for \(name)")
                    let status = result["status"] as? String ?? ""
                    let span = candidates.first { span in
                        status == "OK" ? span.status == .ok : span.status.message?.hasPrefix(status) == true
                    }
                    #expect(span != nil, "\(name): no span with status \(status): \(candidates.map(\.status))")
                    guard let span else { continue }
                    #expect(span.attributes["rpc.grpc.response.messages"] == .int(Int64(result["messages"] as? Int ?? -1)), "\(name)")
                    #expect(span.attributes["rpc.grpc.response.bytes"] == .int(Int64(result["bytes"] as? Int ?? -1)), "\(name)")
                    #expect(span.attributes["gitaly.repository.storage"] == .string("default"), "\(name)")
                }
                let exists = try #require(mine.first { $0.name == "gitaly.RepositoryService/RepositoryExists" })
                #expect(exists.attributes["gitaly.repository.relative_path"] == .string("proj.git"))
                #expect(exists.attributes["rpc.service"] == .string("gitaly.RepositoryService"))
                #expect(exists.attributes["rpc.method"] == .string("RepositoryExists"))
                let getArchive = try #require(mine.first { $0.name == "gitaly.RepositoryService/GetArchive" })
                #expect((getArchive.attributes["rpc.grpc.response.bytes"]?.intValue ?? 0) >= 16 * 1024 * 1024)
                _ = spans
            }
        }
    }
}
