/// One Trace2 EVENT-format record (git `Documentation/technical/api-trace2.txt`, "EVENT Format").
///
/// The common fields are typed; event-specific fields stay in ``fields`` and are read through the accessors, so an
/// event or field this version does not know is carried along and ignored rather than rejected.
public struct Trace2Event: Sendable, Equatable {
    /// `event`: `version`, `start`, `region_enter`, ….
    public var name: String
    /// `sid`: the process's session id.
    public var sid: String
    /// `thread`: `main` or `thNN:<proc>`.
    public var thread: String
    /// `time` (absent in brief mode on most events), in nanoseconds since the Unix epoch.
    public var timeUnixNano: UInt64?
    /// `t_abs`: seconds since the process started.
    public var tAbs: Double?
    /// `t_rel`: seconds relative to the region or thread (for `region_leave` and `thread_exit`, their duration).
    public var tRel: Double?
    /// Every field of the object, including the common ones.
    public var fields: [String: JSONValue]

    /// An event from its parts.
    public init(
        name: String, sid: String, thread: String = "main", timeUnixNano: UInt64? = nil, tAbs: Double? = nil,
        tRel: Double? = nil, fields: [String: JSONValue] = [:]
    ) {
        self.name = name
        self.sid = sid
        self.thread = thread
        self.timeUnixNano = timeUnixNano
        self.tAbs = tAbs
        self.tRel = tRel
        self.fields = fields
    }

    /// Why a JSON object is not a Trace2 event.
    public enum InvalidEvent: Error, Sendable, Equatable {
        /// The line was not one JSON object.
        case notJSON(JSONParseError)
        /// The value was JSON but not an object.
        case notAnObject
        /// `event` or `sid` is missing or not a string.
        case missingEventOrSID
    }

    /// The event a line of EVENT-format output holds.
    public static func parse(line: some Collection<UInt8>) throws(InvalidEvent) -> Trace2Event {
        let value: JSONValue
        do {
            value = try JSONParser.parse(line)
        } catch {
            throw .notJSON(error)
        }
        guard case .object(let fields) = value else { throw .notAnObject }
        guard let name = fields["event"]?.stringValue, let sid = fields["sid"]?.stringValue, !sid.isEmpty else {
            throw .missingEventOrSID
        }
        return Trace2Event(
            name: name, sid: sid, thread: fields["thread"]?.stringValue ?? "main",
            timeUnixNano: fields["time"]?.stringValue.flatMap(Trace2Time.parseEventTime),
            tAbs: fields["t_abs"]?.doubleValue, tRel: fields["t_rel"]?.doubleValue, fields: fields)
    }

    /// A string field.
    public func string(_ key: String) -> String? { fields[key]?.stringValue }
    /// An integer field.
    public func int(_ key: String) -> Int64? { fields[key]?.intValue }
    /// A boolean field.
    public func bool(_ key: String) -> Bool? {
        if case .bool(let flag) = fields[key] { return flag }
        return nil
    }
    /// An array-of-strings field (`argv`, `ancestry`).
    public func strings(_ key: String) -> [String]? { fields[key]?.stringArray }
}
