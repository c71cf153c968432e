/// Turns one ``GitProcess`` into spans: the process, its regions (nested as Trace2 nested them), its threads, and
/// one span per child it started and per `exec`.
///
/// Names are short and stable so they group well in a trace viewer: `git upload-pack`, region
/// `<category>:<label>`, `thread <proc>`, `child git pack-objects`, `exec git-foo`. Details (argv, sid, pid, exit
/// code, data values) are attributes under `git.*`, `process.*` and `trace2.*`; argv, parameters and error
/// messages pass through ``Trace2Redaction`` first.
public enum GitProcessSpanBuilder {
    /// The span ids a process's spans will have: fixed before its spans are built, so a child process can name
    /// its parent's `child` span as its parent.
    public struct IDs: Sendable, Equatable {
        /// The process span.
        public var process: SpanID
        /// `child_start` id → the child span.
        public var children: [Int64: SpanID]
        /// `exec_id` → the exec span.
        public var execs: [Int64: SpanID]

        public init(process: SpanID, children: [Int64: SpanID] = [:], execs: [Int64: SpanID] = [:]) {
            self.process = process
            self.children = children
            self.execs = execs
        }
    }

    /// Fresh ids for `process` and its child and exec spans.
    public static func makeIDs<G: RandomNumberGenerator>(for process: GitProcess, using generator: inout G) -> IDs {
        var ids = IDs(process: SpanID.random(using: &generator))
        for child in process.children { ids.children[child.childID] = SpanID.random(using: &generator) }
        for exec in process.execs { ids.execs[exec.execID] = SpanID.random(using: &generator) }
        return ids
    }

    /// The spans of `process`, in trace `traceID`, the process span under `parent`.
    ///
    /// - Parameter attributes: added to the process span (correlation results).
    public static func spans<G: RandomNumberGenerator>(
        for process: GitProcess, ids: IDs, traceID: TraceID, parent: SpanID?, sampled: Bool = true,
        attributes extra: SpanAttributes = [:], using generator: inout G
    ) -> [Span] {
        var processSpan = Span(
            traceID: traceID, spanID: ids.process, parentSpanID: parent, name: process.spanName, kind: .internal,
            startTimeUnixNano: process.startUnixNano, endTimeUnixNano: max(process.endUnixNano, process.startUnixNano),
            status: status(process), attributes: processAttributes(process), sampled: sampled)
        processSpan.attributes.merge(extra) { _, new in new }
        for error in process.errors {
            processSpan.events.append(
                .init(
                    name: "git.error", timeUnixNano: error.timeUnixNano,
                    attributes: ["message": .string(Trace2Redaction.text(error.message))]))
        }

        var threadSpans: [String: Span] = [:]
        for thread in process.threads {
            let short = thread.name.split(separator: ":", maxSplits: 1).last.map(String.init) ?? thread.name
            threadSpans[thread.name] = Span(
                traceID: traceID, spanID: SpanID.random(using: &generator), parentSpanID: ids.process,
                name: "thread " + short, kind: .internal, startTimeUnixNano: thread.startUnixNano,
                endTimeUnixNano: max(thread.endUnixNano, thread.startUnixNano),
                status: Span.Status(code: .unset),
                attributes: thread.exited
                    ? ["trace2.thread": .string(thread.name)]
                    : ["trace2.thread": .string(thread.name), "trace2.thread.unfinished": .bool(true)],
                sampled: sampled)
        }

        var regionSpans: [Span] = []
        regionSpans.reserveCapacity(process.regions.count)
        for region in process.regions {
            let parentID: SpanID
            if let parentRegion = region.parent {
                parentID = regionSpans[parentRegion].spanID
            } else if let thread = threadSpans[region.thread] {
                parentID = thread.spanID
            } else {
                parentID = ids.process
            }
            var attributes: SpanAttributes = [
                "trace2.region.category": .string(region.category),
                "trace2.region.label": .string(region.label),
                "trace2.region.nesting": .int(Int64(region.nesting)),
            ]
            if let message = region.message { attributes["trace2.region.msg"] = .string(Trace2Redaction.text(message)) }
            if region.thread != "main" { attributes["trace2.thread"] = .string(region.thread) }
            if region.unclosed { attributes["trace2.region.unclosed"] = .bool(true) }
            regionSpans.append(
                Span(
                    traceID: traceID, spanID: SpanID.random(using: &generator), parentSpanID: parentID,
                    name: region.category.isEmpty ? region.label : region.category + ":" + region.label,
                    kind: .internal, startTimeUnixNano: region.startUnixNano,
                    endTimeUnixNano: max(region.endUnixNano, region.startUnixNano), status: Span.Status(code: .unset),
                    attributes: attributes, sampled: sampled))
        }

        for datum in process.data {
            let key = "trace2.data." + datum.category + "." + datum.key
            let value: AttributeValue = datum.intValue.map { .int($0) } ?? .string(datum.value)
            if let region = datum.region {
                regionSpans[region].attributes[key] = value
            } else if datum.thread != "main", threadSpans[datum.thread] != nil {
                threadSpans[datum.thread]!.attributes[key] = value
            } else {
                processSpan.attributes[key] = value
            }
        }
        for timer in process.timers {
            let key = "trace2.timer." + timer.category + "." + timer.name
            var values: SpanAttributes = [key + ".intervals": .int(timer.count)]
            if let total = timer.totalSeconds { values[key + ".total_s"] = .double(total) }
            if let min = timer.minSeconds { values[key + ".min_s"] = .double(min) }
            if let max = timer.maxSeconds { values[key + ".max_s"] = .double(max) }
            if let thread = timer.thread, threadSpans[thread] != nil {
                threadSpans[thread]!.attributes.merge(values) { _, new in new }
            } else {
                processSpan.attributes.merge(values) { _, new in new }
            }
        }
        for counter in process.counters {
            let key = "trace2.counter." + counter.category + "." + counter.name
            if let thread = counter.thread, threadSpans[thread] != nil {
                threadSpans[thread]!.attributes[key] = .int(counter.count)
            } else {
                processSpan.attributes[key] = .int(counter.count)
            }
        }

        var spans = [processSpan]
        for child in process.children {
            var attributes: SpanAttributes = [
                "git.child.id": .int(child.childID),
                "git.child.class": .string(child.childClass),
                "git.argv": .stringArray(Trace2Redaction.argv(child.argv)),
            ]
            if child.useShell { attributes["git.child.use_shell"] = .bool(true) }
            if let pid = child.pid { attributes["process.pid"] = .int(Int64(pid)) }
            if let code = child.exitCode { attributes["process.exit.code"] = .int(code) }
            if let ready = child.ready { attributes["git.child.ready"] = .string(ready) }
            if let hook = child.hookName { attributes["git.hook.name"] = .string(hook) }
            if child.endUnixNano == nil { attributes["git.child.unfinished"] = .bool(true) }
            let status: Span.Status =
                child.exitCode.map { $0 == 0 ? .ok : .init(code: .error, message: "exit code \($0)") }
                ?? .init(code: .unset)
            spans.append(
                Span(
                    traceID: traceID, spanID: ids.children[child.childID] ?? SpanID.random(using: &generator),
                    parentSpanID: ids.process, name: "child " + childName(child), kind: .internal,
                    startTimeUnixNano: child.startUnixNano,
                    endTimeUnixNano: max(child.endUnixNano ?? process.endUnixNano, child.startUnixNano),
                    status: status, attributes: attributes, sampled: sampled))
        }
        for exec in process.execs {
            var attributes: SpanAttributes = [
                "git.exec.id": .int(exec.execID),
                "git.argv": .stringArray(Trace2Redaction.argv(exec.argv)),
            ]
            if let exe = exec.exe { attributes["git.exec.exe"] = .string(exe) }
            if let code = exec.failureCode { attributes["git.exec.failure_errno"] = .int(code) }
            spans.append(
                Span(
                    traceID: traceID, spanID: ids.execs[exec.execID] ?? SpanID.random(using: &generator),
                    parentSpanID: ids.process,
                    name: "exec " + (exec.argv.first.map(GitProcess.basename) ?? exec.exe ?? "?"), kind: .internal,
                    startTimeUnixNano: exec.timeUnixNano,
                    endTimeUnixNano: exec.failureCode == nil
                        ? max(process.endUnixNano, exec.timeUnixNano) : exec.timeUnixNano,
                    status: exec.failureCode == nil
                        ? .ok : .init(code: .error, message: "exec failed (errno \(exec.failureCode!))"),
                    attributes: attributes, sampled: sampled))
        }
        spans.append(contentsOf: threadSpans.values.sorted { $0.startTimeUnixNano < $1.startTimeUnixNano })
        spans.append(contentsOf: regionSpans)
        return spans
    }

    /// `git pack-objects` for `["git", "pack-objects", …]`, `git-upload-pack` for a shell command line, the hook
    /// name for hooks.
    static func childName(_ child: GitProcess.Child) -> String {
        if let hook = child.hookName { return "hook " + hook }
        guard let first = child.argv.first else { return child.childClass }
        let program = GitProcess.basename(String(first.split(separator: " ").first ?? Substring(first)))
        if program == "git", let sub = GitProcess.subcommand(in: child.argv) { return "git " + sub }
        return program
    }

    static func status(_ process: GitProcess) -> Span.Status {
        if let signal = process.signal { return .init(code: .error, message: "killed by signal \(signal)") }
        if let code = process.exitCode {
            if code == 0 { return .ok }
            let detail = process.errors.first.map { ": " + Trace2Redaction.text($0.message) } ?? ""
            return .init(code: .error, message: "exit code \(code)\(detail)")
        }
        return .init(code: .unset)
    }

    static func processAttributes(_ process: GitProcess) -> SpanAttributes {
        var a: SpanAttributes = [
            "trace2.sid": .string(process.sid.text),
            "git.argv": .stringArray(Trace2Redaction.argv(process.argv)),
            "trace2.events": .int(Int64(process.eventCount)),
        ]
        if let name = process.commandName { a["git.command"] = .string(name) }
        if let hierarchy = process.hierarchy { a["git.command.hierarchy"] = .string(hierarchy) }
        if !process.modes.isEmpty { a["git.command.mode"] = .string(process.modes.joined(separator: ",")) }
        if let alias = process.aliasName { a["git.alias"] = .string(alias) }
        if let parent = process.sid.parent { a["trace2.parent_sid"] = .string(parent) }
        if let pid = process.pid { a["process.pid"] = .int(Int64(pid)) }
        if let version = process.gitVersion { a["git.version"] = .string(version) }
        if let worktree = process.worktree { a["git.worktree"] = .string(worktree) }
        if let repository = process.repositoryPaths.first { a["git.repository.path"] = .string(repository) }
        if let code = process.exitCode { a["process.exit.code"] = .int(code) }
        if let signal = process.signal { a["git.signal"] = .int(signal) }
        switch process.ending {
        case .atexit: a["trace2.ending"] = .string("atexit")
        case .exit: a["trace2.ending"] = .string("exit")
        case .signal: a["trace2.ending"] = .string("signal")
        case .incomplete(let reason): a["trace2.ending"] = .string("incomplete: " + reason)
        }
        for (name, value) in process.parameters {
            a["trace2.param." + name] = .string(Trace2Redaction.parameter(name: name, value: value))
        }
        if process.droppedEvents > 0 { a["trace2.dropped_events"] = .int(Int64(process.droppedEvents)) }
        return a
    }
}
