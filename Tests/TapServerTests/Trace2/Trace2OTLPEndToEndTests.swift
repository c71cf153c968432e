import Foundation
import TapServer
import TapTrace
import Testing

/// `gitaly-tap proxy --otlp ... --trace2-*` as a user runs it: a real git clone through a Workhorse-like client, the
/// tap and a Gitaly-like upstream that runs real git, with the caller's `traceparent`; what the OTLP receiver
/// decodes (official opentelemetry-proto) must be one tree: caller span → RPC span → git process → Trace2 region.
@Suite("Trace2 over OTLP end to end", .serialized)
struct Trace2OTLPEndToEndTests {
    enum Source: String, CaseIterable, Sendable {
        /// The git wrapper as Gitaly's bin_path, sending to `--trace2-socket`.
        case socket
        /// Gitaly's gitaly-trace2* temp files in its TMPDIR, read through `--trace2-dir`.
        case tempfile
    }

    /// The caller span id in each `traceparent` the upstream received for `correlationID`, by method (the upstream
    /// logs one JSON line per call). Workhorse starts a span of its own per call under the HTTP request's trace, so
    /// this is the id the RPC span must name as its parent: exactly what the tap forwarded.
    static func callerSpans(upstreamLog: String, correlationID: String, trace: String) -> [String: [String]] {
        var out: [String: [String]] = [:]
        for line in upstreamLog.split(separator: "\n") {
            guard let call = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                call["correlation_id"] as? String == correlationID, let method = call["method"] as? String,
                let header = call["traceparent"] as? String
            else { continue }
            let parts = header.split(separator: "-").map(String.init)
            #expect(parts.count == 4 && parts[1] == trace, "\(method) reached the upstream with traceparent \(header)")
            if parts.count == 4 { out[String(method.dropFirst()), default: []].append(parts[2]) }
        }
        return out
    }

    @Test(
        "a real clone through the executable exports caller → RPC → git process → region with exact parent ids",
        arguments: [(Source.socket, "protobuf"), (Source.tempfile, "json")])
    func cloneExportsOneTree(source: Source, encodingName: String) async throws {
        try GoPeer.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let storage = try await makeStorage(in: dir, repositories: ["a"])
        let gitalyTmp = dir.file("gitaly-tmp")
        try FileManager.default.createDirectory(atPath: gitalyTmp, withIntermediateDirectories: false)
        let gitalySocket = dir.file("gitaly.sock")
        let tapSocket = dir.file("tap.sock")

        var upstreamArguments = ["upstream", "--listen", "unix:" + gitalySocket, "--storage", "default=" + storage]
        let trace2Arguments: [String]
        switch source {
        case .socket:
            let traceSocket = dir.file("t2.sock")
            trace2Arguments = ["--trace2-socket", traceSocket]
            let wrapper = try installTrace2Wrapper(in: dir, socket: traceSocket)
            upstreamArguments += ["--trace2", "off", "--git", wrapper]
        case .tempfile:
            trace2Arguments = ["--trace2-dir", gitalyTmp]
            upstreamArguments += ["--trace2", "tempfile"]
        }
        let upstream = try PeerProcess(
            GoPeer.executable, upstreamArguments, dir: dir, name: "upstream", environment: ["TMPDIR": gitalyTmp])
        defer { upstream.stop() }
        _ = try await upstream.waitReady()
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }

        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + tapSocket, "--upstream", "unix:" + gitalySocket, "--spans",
                dir.file("spans.jsonl"), "--otlp", receiver.url, "--otlp-encoding", encodingName, "--service-name",
                "gdk-gitaly-tap", "--log-format", "json",
            ] + trace2Arguments, dir: dir, name: "tap")
        defer { tap.stop() }
        try await tap.waitForFile(tapSocket)
        let workhorse = try PeerProcess(
            GoPeer.executable, ["workhorse", "--target", "unix:" + tapSocket], dir: dir, name: "workhorse")
        defer { workhorse.stop() }
        let ready = try await workhorse.waitReady()
        let json = try JSONSerialization.jsonObject(with: Data(ready.dropFirst("READY ".count).utf8)) as? [String: Any]
        let url = try #require(json?["url"] as? String)

        // The caller: a request that already carries a trace (as Rails' or Shell's would).
        let trace = source == .socket ? "4bf92f3577b34da6a3ce929d0e0e4736" : "0af7651916cd43dd8448eb211c80319c"
        let callerSpan = source == .socket ? "00f067aa0ba902b7" : "b7ad6b7169203331"
        let correlationID = "otlp-trace2-\(source.rawValue)"
        let clone = try await runCommand(
            "/usr/bin/git",
            [
                "-c", "http.extraHeader=X-Request-Id: \(correlationID)", "-c",
                "http.extraHeader=traceparent: 00-\(trace)-\(callerSpan)-01", "clone", "-q", url + "/group/a.git",
                dir.file("clone-a"),
            ],
            environment: ["GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"])
        #expect(clone.status == 0, "clone: \(clone.stderr) upstream: \(upstream.stderr.suffix(2000))")

        try await OTLPExportTests.waitUntil(timeout: .seconds(60), "a pack-objects region of the caller's trace") {
            try receiver.spans().contains {
                $0["traceId"] as? String == trace && $0["name"] as? String == "pack-objects:write-pack-file"
            }
        }
        // Workhorse's backchannel connection would hold the drain open. Then SIGTERM: the Trace2 sources, the
        // pipeline and the exporter hand in and send everything before the exit.
        workhorse.stop()
        tap.signal(SIGTERM)
        _ = try await ShutdownTests.waitExit(tap, timeout: .seconds(30))
        #expect(tap.process.terminationStatus == 0, "\(tap.stderr)")

        let stats = try receiver.stats()
        #expect(stats["decode_errors"] as? Int == 0, "receiver could not decode: \(stats["errors"] ?? "")")
        let received = try receiver.spans()
        for span in received {
            #expect(span["encoding"] as? String == encodingName)
            let resource = span["resource"] as? [String: Any]
            #expect(resource?["service.name"] as? String == "gdk-gitaly-tap", "\(span["name"] ?? "")")
            #expect(resource?["service.version"] as? String == GitalyTapVersion.current)
            #expect(resource?["host.name"] as? String == ProcessInfo.processInfo.hostName)
        }
        // The span log and OTLP carry the same spans.
        #expect(
            Set(try ShutdownTests.spans(dir).compactMap { $0["spanId"] as? String })
                == Set(received.compactMap { $0["spanId"] as? String }))

        let inTrace = received.filter { $0["traceId"] as? String == trace }
        func id(_ span: [String: Any]) -> String { span["spanId"] as? String ?? "" }
        func parent(_ span: [String: Any]) -> String { span["parentSpanId"] as? String ?? "" }
        func children(of span: [String: Any], named name: String) -> [[String: Any]] {
            inTrace.filter { parent($0) == id(span) && $0["name"] as? String == name }
        }

        // 1. Every RPC span of the clone is a server span in the caller's trace, under the caller span that its
        //    request carried to the upstream: the same ids, call for call.
        let callers = Self.callerSpans(upstreamLog: upstream.stderr, correlationID: correlationID, trace: trace)
        let rpcs = received.filter {
            OTLPExportTests.attribute($0, "rpc.system") as? String == "grpc"
                && OTLPExportTests.attribute($0, "gitlab.correlation_id") as? String == correlationID
        }
        #expect(Set(callers.keys) == Set(rpcs.compactMap { $0["name"] as? String }), "\(callers)")
        #expect(callers["gitaly.SmartHTTPService/InfoRefsUploadPack"]?.count == 1, "\(callers)")
        for (method, ids) in callers {
            let mine = rpcs.filter { $0["name"] as? String == method }
            #expect(mine.map(parent).sorted() == ids.sorted(), "\(method): RPC span parents vs the callers' spans")
        }
        for rpc in rpcs {
            #expect(rpc["traceId"] as? String == trace, "\(rpc["name"] ?? "") continues the caller's trace")
            #expect(rpc["kind"] as? Int == 2, "SPAN_KIND_SERVER")
        }

        // 2. Each RPC ran one upload-pack, whose process span is a direct child of the RPC span.
        var uploadPacks: [[String: Any]] = []
        for rpc in rpcs {
            let mine = children(of: rpc, named: "git upload-pack")
            #expect(
                mine.count == 1,
                "\(rpc["name"] ?? ""): \(inTrace.filter { parent($0) == id(rpc) }.map { $0["name"] ?? "" })")
            uploadPacks += mine
        }
        for process in uploadPacks {
            #expect(process["kind"] as? Int == 1, "SPAN_KIND_INTERNAL")
            #expect(OTLPExportTests.attribute(process, "git.command") as? String == "upload-pack")
            let key = OTLPExportTests.attribute(process, "trace2.correlation.key") as? String
            #expect(key == (source == .socket ? "def_param" : "sid_prefix"))
        }

        // 3. The fetch: upload-pack → its `child` span → the pack-objects process → the write-pack-file region.
        let fetches = rpcs.filter { $0["name"] as? String == "gitaly.SmartHTTPService/PostUploadPackWithSidechannel" }
        let chains = fetches.flatMap { fetch in
            children(of: fetch, named: "git upload-pack").flatMap { uploadPack in
                children(of: uploadPack, named: "child git pack-objects").flatMap { child in
                    children(of: child, named: "git pack-objects").flatMap { packObjects in
                        children(of: packObjects, named: "pack-objects:write-pack-file").map {
                            (fetch, uploadPack, child, packObjects, $0)
                        }
                    }
                }
            }
        }
        #expect(
            chains.count == 1, "one pack written: \(inTrace.map { "\($0["name"] ?? "") \(id($0)) <- \(parent($0))" })")
        if let (fetch, uploadPack, child, packObjects, region) = chains.first {
            #expect(callers[fetch["name"] as? String ?? ""]?.contains(parent(fetch)) == true)
            #expect(parent(uploadPack) == id(fetch))
            #expect(parent(child) == id(uploadPack))
            #expect(parent(packObjects) == id(child))
            #expect(parent(region) == id(packObjects))
            #expect(
                OTLPExportTests.attribute(packObjects, "git.command.hierarchy") as? String == "upload-pack/pack-objects"
            )
            #expect(OTLPExportTests.attribute(region, "trace2.region.category") as? String == "pack-objects")
            #expect(OTLPExportTests.attribute(region, "trace2.region.label") as? String == "write-pack-file")
            for span in [uploadPack, child, packObjects, region] {
                #expect(span["traceId"] as? String == trace)
                #expect(span["flags"] as? Int == 1, "sampled like the caller")
            }
        }

        // 4. Nothing in the caller's trace hangs loose: every span reaches one of the callers' spans through parents
        //    the receiver holds, and only the RPC spans name a caller span.
        let byID = Dictionary(inTrace.map { (id($0), $0) }) { first, _ in first }
        #expect(byID.count == inTrace.count, "span ids are unique")
        let callerIDs = Set(callers.values.joined())
        for span in inTrace {
            var cursor = span
            var hops = 0
            while let up = byID[parent(cursor)], hops < inTrace.count {
                cursor = up
                hops += 1
            }
            #expect(callerIDs.contains(parent(cursor)), "\(span["name"] ?? "") roots at \(cursor["name"] ?? "")")
            #expect(
                OTLPExportTests.attribute(cursor, "rpc.system") as? String == "grpc",
                "\(span["name"] ?? "") roots at \(cursor["name"] ?? "")")
        }
        // Every git process found its RPC: outside the caller's trace there is only the tap's connection span.
        #expect(
            received.filter { $0["traceId"] as? String != trace }.map { $0["name"] as? String ?? "" }
                == ["gitaly-tap/connection"])
    }
}
