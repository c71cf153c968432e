import TapTrace
import Testing

@Suite("Trace2 correlator")
struct Trace2CorrelatorTests {
    static let ms: UInt64 = 1_000_000
    static let second: UInt64 = 1_000_000_000

    /// Feeds a capture's processes into `correlator`; returns the spans it emitted meanwhile.
    static func feed(_ name: String, into correlator: inout Trace2Correlator, now: UInt64) throws -> [Span] {
        var spans: [Span] = []
        for output in try Trace2Fixture.outputs(name) { spans += correlator.add(output, now: now) }
        return spans
    }

    static func window(_ name: String) throws -> (start: UInt64, end: UInt64) {
        let processes = try Trace2Fixture.processes(name)
        return (processes.map(\.startUnixNano).min()!, processes.map(\.endUnixNano).max()!)
    }

    @Test("sid prefix = correlation id: the whole clone tree hangs under the RPC, nested and inside its window")
    func sidPrefix() throws {
        let (start, end) = try Self.window("clone-sid-prefix")
        var correlator = Trace2Correlator(seed: 1)
        let rpc = rpcSpan(
            traceLow: 1, spanID: 0x11, start: start - 2 * Self.ms, end: end + 2 * Self.ms,
            correlationID: "corr-clone-1", relativePath: "group/other.git")
        #expect(correlator.add(rpc: rpc, now: end).isEmpty)
        let spans = try Self.feed("clone-sid-prefix", into: &correlator, now: end)
        #expect(correlator.pendingCount == 0)
        #expect(spans.allSatisfy { $0.traceID == rpc.traceID })
        let clone = try spans.one("git clone")
        #expect(clone.parentSpanID == rpc.spanID)
        #expect(clone.string("trace2.correlation.key") == "sid_prefix")
        #expect(clone.string("gitlab.correlation_id") == "corr-clone-1")

        // upload-pack runs under clone's shell child span, pack-objects under upload-pack's child span.
        let uploadPack = try spans.one("git upload-pack")
        let shellChild = try #require(spans.span(id: uploadPack.parentSpanID))
        #expect(shellChild.name == "child git-upload-pack")
        #expect(shellChild.parentSpanID == clone.spanID)
        let packObjects = try spans.one("git pack-objects")
        let packChild = try #require(spans.span(id: packObjects.parentSpanID))
        #expect(packChild.name == "child git pack-objects")
        #expect(packChild.parentSpanID == uploadPack.spanID)
        #expect(try spans.span(id: spans.one("git index-pack").parentSpanID)?.name == "child git index-pack")

        // Regions nest under their process and enclosing region.
        let round = try spans.one("negotiation_v2:round")
        #expect(spans.span(id: round.parentSpanID)?.name == "fetch-pack:negotiation_v2")
        #expect(try spans.span(id: spans.one("fetch-pack:negotiation_v2").parentSpanID)?.spanID == clone.spanID)
        #expect(try spans.one("pack-objects:write-pack-file").parentSpanID == packObjects.spanID)

        // Every git span lies inside the RPC span, and every parent exists.
        let ids = Set(spans.map(\.spanID)).union([rpc.spanID])
        for span in spans {
            #expect(span.startTimeUnixNano >= rpc.startTimeUnixNano && span.endTimeUnixNano <= rpc.endTimeUnixNano)
            #expect(span.parentSpanID.map(ids.contains) == true, "\(span.name) has a dangling parent")
        }
        #expect(correlator.counts.matched["sid_prefix"] == 1)
    }

    @Test("def_param CORRELATION_ID joins a process without a sid prefix")
    func defParam() throws {
        let (start, end) = try Self.window("def-param")
        var correlator = Trace2Correlator(seed: 2)
        let other = rpcSpan(
            traceLow: 9, spanID: 0x99, start: start - Self.ms, end: end + Self.ms, correlationID: "other")
        let rpc = rpcSpan(
            traceLow: 2, spanID: 0x22, start: start - Self.ms, end: end + Self.ms, correlationID: "corr-param-2")
        _ = correlator.add(rpc: other, now: end)
        _ = correlator.add(rpc: rpc, now: end)
        let spans = try Self.feed("def-param", into: &correlator, now: end)
        let process = try spans.one("git rev-list")
        #expect(process.parentSpanID == rpc.spanID && process.traceID == rpc.traceID)
        #expect(process.string("trace2.correlation.key") == "def_param")
    }

    @Test("--git-dir plus the time window joins a process with no correlation id")
    func gitDir() throws {
        let (start, end) = try Self.window("git-dir")
        var correlator = Trace2Correlator(seed: 3)
        let before = rpcSpan(
            traceLow: 7, spanID: 0x77, start: start - 5 * Self.second, end: start - 4 * Self.second,
            relativePath: "group/c.git")
        let otherRepo = rpcSpan(
            traceLow: 8, spanID: 0x88, start: start - Self.ms, end: end + Self.ms, relativePath: "group/a.git")
        let rpc = rpcSpan(
            traceLow: 3, spanID: 0x33, start: start - Self.ms, end: end + Self.ms, relativePath: "group/c.git")
        for span in [before, otherRepo, rpc] { _ = correlator.add(rpc: span, now: end) }
        let spans = try Self.feed("git-dir", into: &correlator, now: end)
        let process = try spans.one("git upload-pack")
        #expect(process.parentSpanID == rpc.spanID)
        #expect(process.string("trace2.correlation.key") == "git_dir")
        #expect(process.string("git.repository.path")?.hasSuffix("/group/c.git") == true)
    }

    @Test("with storage roots configured, git_dir needs the exact path")
    func gitDirWithStorageRoot() throws {
        let (start, end) = try Self.window("git-dir")
        var configuration = Trace2Correlator.Configuration()
        configuration.storageRoots = ["default": "/srv/elsewhere"]
        var correlator = Trace2Correlator(configuration: configuration, seed: 4)
        _ = correlator.add(
            rpc: rpcSpan(
                traceLow: 3, spanID: 0x33, start: start - Self.ms, end: end + Self.ms, relativePath: "group/c.git"),
            now: end)
        #expect(try Self.feed("git-dir", into: &correlator, now: end).isEmpty)
        let spans = correlator.flush(now: end + Self.second)
        #expect(try spans.one("git upload-pack").string("trace2.correlation.key") == "none")
    }

    @Test("the sid prefix wins over a repository match with another correlation id")
    func strongestKeyWins() throws {
        let (start, end) = try Self.window("clone-sid-prefix")
        var correlator = Trace2Correlator(seed: 5)
        let sameRepo = rpcSpan(
            traceLow: 5, spanID: 0x55, start: start - Self.ms, end: end + Self.ms, correlationID: "someone-else",
            relativePath: "group/a.git")
        _ = correlator.add(rpc: sameRepo, now: end)
        // The clone's own RPC has not finished yet: the tree waits for it rather than joining the wrong call.
        #expect(try Self.feed("clone-sid-prefix", into: &correlator, now: end).isEmpty)
        #expect(correlator.pendingCount == 5)
        let rpc = rpcSpan(
            traceLow: 1, spanID: 0x11, start: start - Self.ms, end: end + Self.ms, correlationID: "corr-clone-1")
        let spans = correlator.add(rpc: rpc, now: end + Self.ms)
        #expect(spans.filter { $0.name.hasPrefix("git ") }.count == 5)
        #expect(spans.allSatisfy { $0.traceID == rpc.traceID })
        #expect(try spans.one("git clone").parentSpanID == rpc.spanID)
    }

    @Test("a call Gitaly makes back over the backchannel never takes a git process")
    func backchannelCallsFromGitaly() throws {
        let (start, end) = try Self.window("def-param")
        var correlator = Trace2Correlator(seed: 14)
        let rpc = rpcSpan(
            "gitaly.SmartHTTPService/PostReceivePack", traceLow: 1, spanID: 0x1, start: start - Self.ms,
            end: end + 10 * Self.ms, correlationID: "corr-param-2")
        var vote = rpcSpan(
            "gitaly.RefTransaction/VoteTransaction", traceLow: 1, spanID: 0x2, start: start - Self.ms / 2,
            end: end + Self.ms, correlationID: "corr-param-2")
        vote.attributes["gitaly.backchannel.from_gitaly"] = .bool(true)
        _ = correlator.add(rpc: rpc, now: end)
        _ = correlator.add(rpc: vote, now: end)
        let spans = try Self.feed("def-param", into: &correlator, now: end)
        #expect(try spans.one("git rev-list").parentSpanID == rpc.spanID)
    }

    @Test("several RPCs with one correlation id: the one whose window holds the process wins")
    func sharedCorrelationID() throws {
        let (start, end) = try Self.window("def-param")
        var correlator = Trace2Correlator(seed: 6)
        let earlier = rpcSpan(
            traceLow: 1, spanID: 0x1, start: start - 3 * Self.second, end: start - 2 * Self.second,
            correlationID: "corr-param-2")
        let current = rpcSpan(
            traceLow: 1, spanID: 0x2, start: start - Self.ms, end: end + Self.ms, correlationID: "corr-param-2")
        let later = rpcSpan(
            traceLow: 1, spanID: 0x3, start: end + 2 * Self.second, end: end + 3 * Self.second,
            correlationID: "corr-param-2")
        for span in [earlier, later, current] { _ = correlator.add(rpc: span, now: end) }
        let spans = try Self.feed("def-param", into: &correlator, now: end)
        #expect(try spans.one("git rev-list").parentSpanID == current.spanID)
    }

    @Test("two clones of different repositories at the same time are not crossed")
    func concurrentRepositories() throws {
        let (start, end) = try Self.window("concurrent")
        var correlator = Trace2Correlator(seed: 7)
        let a = rpcSpan(
            traceLow: 0xA, spanID: 0xA, start: start - Self.ms, end: end + Self.ms, relativePath: "group/a.git")
        let b = rpcSpan(
            traceLow: 0xB, spanID: 0xB, start: start - Self.ms, end: end + Self.ms, relativePath: "group/b.git")
        _ = correlator.add(rpc: a, now: end)
        _ = correlator.add(rpc: b, now: end)
        let spans = try Self.feed("concurrent", into: &correlator, now: end)
        let clones = spans.named("git clone")
        #expect(clones.count == 2)
        for span in spans.filter({ $0.name == "git upload-pack" }) {
            let repo = try #require(span.string("git.repository.path"))
            let expected = repo.hasSuffix("/group/a.git") ? a : b
            #expect(span.traceID == expected.traceID, "\(repo) crossed into the other clone's trace")
        }
        for rpc in [a, b] {
            let tree = spans.filter { $0.traceID == rpc.traceID }
            #expect(tree.filter { $0.name.hasPrefix("git ") }.count == 5)
            #expect(tree.named("git clone").first?.parentSpanID == rpc.spanID)
            #expect(tree.named("git clone").first?.string("trace2.correlation.key") == "git_dir")
        }
    }

    @Test("a process that arrives before its RPC is held, then emitted when the RPC finishes")
    func processBeforeRPC() throws {
        let (start, end) = try Self.window("def-param")
        var correlator = Trace2Correlator(seed: 8)
        #expect(try Self.feed("def-param", into: &correlator, now: end).isEmpty)
        #expect(correlator.tick(now: end + 5 * Self.second).isEmpty)
        let rpc = rpcSpan(
            traceLow: 2, spanID: 0x22, start: start - Self.ms, end: end + Self.ms, correlationID: "corr-param-2")
        let spans = correlator.add(rpc: rpc, now: end + 6 * Self.second)
        #expect(try spans.one("git rev-list").parentSpanID == rpc.spanID)
    }

    @Test("an unmatched process is emitted as its own trace once its wait expires")
    func unmatched() throws {
        let (_, end) = try Self.window("git-dir")
        var correlator = Trace2Correlator(seed: 9)
        #expect(try Self.feed("git-dir", into: &correlator, now: end).isEmpty)
        #expect(correlator.tick(now: end + 9 * Self.second).isEmpty)
        let spans = correlator.tick(now: end + 11 * Self.second)
        let process = try spans.one("git upload-pack")
        #expect(process.parentSpanID == nil)
        #expect(process.string("trace2.correlation.key") == "none")
        #expect(correlator.counts.unmatched == 1)
    }

    @Test("a cat-file --batch that outlives the call that started it is marked shared, not hung under it")
    func sharedProcess() throws {
        let process = try #require(try Trace2Fixture.processes("signal").first)
        var correlator = Trace2Correlator(seed: 10)
        let rpc = rpcSpan(
            "gitaly.CommitService/FindCommit", traceLow: 4, spanID: 0x44, start: process.startUnixNano - Self.ms,
            end: process.startUnixNano + Self.ms, relativePath: "group/a.git")
        var adjusted = process
        adjusted.endUnixNano = process.startUnixNano + 10 * Self.second  // Gitaly keeps it ~10 s
        _ = correlator.add(rpc: rpc, now: adjusted.endUnixNano)
        _ = correlator.add(.started(sid: process.sid.text), now: adjusted.endUnixNano)
        let spans = correlator.add(.finished(adjusted), now: adjusted.endUnixNano)
        let span = try spans.one("git cat-file")
        #expect(span.traceID != rpc.traceID && span.parentSpanID == nil)
        #expect(span.attributes["git.shared"] == .bool(true))
        #expect(span.string("git.shared.kind") == "cat-file cache")
        #expect(span.string("trace2.correlation.rpc.span_id") == rpc.spanID.description)
        #expect(correlator.counts.shared == 1)
    }

    @Test("a child whose parent never reports becomes a root after a short wait")
    func orphanChild() throws {
        let all = try Trace2Fixture.processes("clone-sid-prefix")
        let packObjects = try #require(all.first { $0.commandName == "pack-objects" })
        var correlator = Trace2Correlator(seed: 11)
        let now = packObjects.endUnixNano
        #expect(correlator.add(.finished(packObjects), now: now).isEmpty)
        #expect(correlator.tick(now: now + Self.second).isEmpty)
        let rpc = rpcSpan(
            traceLow: 1, spanID: 0x11, start: packObjects.startUnixNano - Self.ms,
            end: packObjects.endUnixNano + Self.ms,
            correlationID: "corr-clone-1")
        _ = correlator.add(rpc: rpc, now: now + Self.second)
        let spans = correlator.tick(now: now + 3 * Self.second)
        let span = try spans.one("git pack-objects")
        #expect(span.parentSpanID == rpc.spanID)
        #expect(span.string("trace2.correlation.key") == "sid_prefix")
    }

    @Test("memory stays bounded: old RPC summaries are forgotten, pending processes are capped")
    func bounded() throws {
        var configuration = Trace2Correlator.Configuration()
        configuration.maximumPendingProcesses = 10
        configuration.maximumRetainedRPCs = 5
        var correlator = Trace2Correlator(configuration: configuration, seed: 12)
        for i in 0..<20 {
            _ = correlator.add(rpc: rpcSpan(traceLow: UInt64(i + 1), spanID: UInt64(i + 1), start: 0, end: 1), now: 1)
        }
        #expect(correlator.retainedRPCCount == 5)
        var emitted = 0
        for i in 0..<30 {
            var process = GitProcess(
                sid: "20260101T000000.000000Z-H00000000-P\(String(format: "%08x", i + 1))", startUnixNano: 10)
            process.argv = ["git", "version"]
            process.ending = .atexit
            emitted += correlator.add(.finished(process), now: UInt64(100 + i)).count
        }
        #expect(correlator.pendingCount == 10)
        #expect(emitted == 20)
        #expect(correlator.tick(now: 200 * Self.second).count == 10)
        #expect(correlator.retainedRPCCount == 0)
    }

    @Test("a process that git exec'd into hangs under the exec span of the process it replaced")
    func execChild() throws {
        let parentSID = "20260101T000000.000000Z-H00000000-P00000100"
        let childSID = parentSID + "/20260101T000000.002000Z-H00000000-P00000100"
        let base: UInt64 = 1_767_225_600_000_000_000
        func event(_ sid: String, _ name: String, _ micros: UInt64, _ fields: [String: JSONValue] = [:]) -> Trace2Event
        {
            Trace2Event(name: name, sid: sid, timeUnixNano: base + micros * 1000, fields: fields)
        }
        var assembler = Trace2ProcessAssembler()
        var outputs: [Trace2ProcessAssembler.Output] = []
        outputs += assembler.add(event(parentSID, "version", 10), now: base)
        outputs += assembler.add(
            event(parentSID, "start", 20, ["argv": .array([.string("git"), .string("foo")])]), now: base)
        outputs += assembler.add(
            event(
                parentSID, "exec", 1000,
                ["exec_id": .number("0"), "exe": .string("git"), "argv": .array([.string("git-foo")])]),
            now: base)
        // The exec closes the parent's connection (close-on-exec); the new program reports with a nested sid.
        outputs += assembler.endOfStream(sids: [parentSID], reason: "connection closed")
        outputs += assembler.add(
            event(childSID, "start", 2100, ["argv": .array([.string("git-foo")])]), now: base)
        outputs += assembler.add(event(childSID, "atexit", 3000, ["code": .number("0")]), now: base)
        var correlator = Trace2Correlator(seed: 13)
        var spans: [Span] = []
        for output in outputs { spans += correlator.add(output, now: base) }
        spans += correlator.flush(now: base + Self.second)
        let exec = try spans.one("exec git-foo")
        let parent = try #require(spans.first { $0.string("trace2.sid") == parentSID })
        #expect(exec.parentSpanID == parent.spanID)
        let child = try #require(spans.first { $0.string("trace2.sid") == childSID })
        #expect(child.parentSpanID == exec.spanID)
        #expect(child.traceID == parent.traceID)
    }
}
