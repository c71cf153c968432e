import TapWire

/// Turns the GitLab and Gitaly request metadata (GITALY-WIRE.md §2) into span attributes.
///
/// It reads an allow-list of keys and nothing else, so a secret can only reach a span if someone adds its key
/// here: `authorization` (an HMAC token) is never read, see ``redactedMetadataNames``.
public enum GitLabMetadata {
    /// Metadata keys whose values are secrets: never put in a span, log or recording in clear.
    public static let redactedMetadataNames: Set<String> = ["authorization"]

    /// The prefix of Gitaly feature-flag keys; the flag name is the rest of the key.
    public static let featureFlagPrefix = "gitaly-feature-"

    /// The span attribute keys this type produces.
    public enum AttributeKey {
        /// From `x-gitlab-correlation-id`.
        public static let correlationID = "gitlab.correlation_id"
        /// From `x-gitlab-client-name` (Workhorse, Shell), else `client_name` (Rails).
        public static let clientName = "gitlab.client_name"
        /// From `user_id`.
        public static let userID = "gitlab.user_id"
        /// From `username`.
        public static let username = "gitlab.username"
        /// From `remote_ip`.
        public static let remoteIP = "gitlab.remote_ip"
        /// From `key_id` (GitLab Shell).
        public static let keyID = "gitlab.key_id"
        /// From `key_type` (GitLab Shell).
        public static let keyType = "gitlab.key_type"
        /// From `gitaly-session-id`.
        public static let sessionID = "gitaly.session_id"
        /// From `call_site`.
        public static let callSite = "gitaly.call_site"
        /// From `deadline_type` (`regular` or `limited`).
        public static let deadlineType = "gitaly.deadline_type"
        /// Sorted names of flags sent as `gitaly-feature-<name>: true`.
        public static let featureFlagsEnabled = "gitaly.feature_flags.enabled"
        /// Sorted names of flags sent as `gitaly-feature-<name>: false`.
        public static let featureFlagsDisabled = "gitaly.feature_flags.disabled"
        /// From `gitaly-sidechannel-id`, as an integer.
        public static let sidechannelID = "gitaly.sidechannel_id"
    }

    /// What a metadata key means to the span.
    private enum Role: Sendable {
        /// A plain string attribute under this key.
        case string(String)
        /// `x-gitlab-client-name`, which wins over `client_name`.
        case clientName
        /// `client_name`.
        case rawClientName
        /// `gitaly-sidechannel-id`.
        case sidechannelID
        /// A secret: never read.
        case redacted
    }

    /// The metadata keys read, and how.
    private static let roles = NameTable<Role>([
        "x-gitlab-correlation-id": .string(AttributeKey.correlationID),
        "user_id": .string(AttributeKey.userID),
        "username": .string(AttributeKey.username),
        "remote_ip": .string(AttributeKey.remoteIP),
        "key_id": .string(AttributeKey.keyID),
        "key_type": .string(AttributeKey.keyType),
        "gitaly-session-id": .string(AttributeKey.sessionID),
        "call_site": .string(AttributeKey.callSite),
        "deadline_type": .string(AttributeKey.deadlineType),
        "x-gitlab-client-name": .clientName,
        "client_name": .rawClientName,
        "gitaly-sidechannel-id": .sidechannelID,
        "authorization": .redacted,
    ])

    /// Span attributes from request metadata.
    ///
    /// - Parameters:
    ///   - metadata: request metadata in arrival order, names already lower-case.
    ///   - capacity: room to reserve for attributes in all, for a caller that adds its own after these.
    /// - Returns: one attribute per non-empty known key; the first value of a repeated key wins. Feature flags whose
    ///   value is not `true`/`false` (any case) are skipped; a `gitaly-sidechannel-id` that is not a decimal
    ///   int64 is skipped rather than logged as a string, so the attribute keeps one type.
    public static func attributes(from metadata: [(name: String, value: String)], capacity: Int = 0) -> SpanAttributes {
        attributes(from: metadata.map { HeaderField(name: $0.name, value: $0.value) }, capacity: capacity)
    }

    /// Span attributes from a call's request metadata, as the call assembler keeps it (see the other overload).
    public static func attributes(from metadata: [HeaderField], capacity: Int = 0) -> SpanAttributes {
        var attributes: SpanAttributes = [:]
        attributes.reserveCapacity(max(capacity, metadata.count))
        var rawClientName: String?
        var enabled: Set<String> = []
        var disabled: Set<String> = []
        for field in metadata where !field.value.isEmpty {
            let (name, value) = (field.name, field.value)
            switch roles[name] {
            case .string(let key):
                if attributes[key] == nil { attributes[key] = .string(value) }
            case .clientName:
                if attributes[AttributeKey.clientName] == nil { attributes[AttributeKey.clientName] = .string(value) }
            case .rawClientName:
                if rawClientName == nil { rawClientName = value }
            case .sidechannelID:
                if attributes[AttributeKey.sidechannelID] == nil, let id = Int64(value) {
                    attributes[AttributeKey.sidechannelID] = .int(id)
                }
            case .redacted:
                continue
            case nil:
                guard name.hasPrefix(featureFlagPrefix) else { continue }
                let flag = String(name.dropFirst(featureFlagPrefix.count))
                guard !flag.isEmpty, !enabled.contains(flag), !disabled.contains(flag) else { continue }
                switch value.lowercased() {
                case "true": enabled.insert(flag)
                case "false": disabled.insert(flag)
                default: break
                }
            }
        }
        if attributes[AttributeKey.clientName] == nil, let rawClientName {
            attributes[AttributeKey.clientName] = .string(rawClientName)
        }
        if !enabled.isEmpty { attributes[AttributeKey.featureFlagsEnabled] = .stringArray(enabled.sorted()) }
        if !disabled.isEmpty { attributes[AttributeKey.featureFlagsDisabled] = .stringArray(disabled.sorted()) }
        return attributes
    }
}
