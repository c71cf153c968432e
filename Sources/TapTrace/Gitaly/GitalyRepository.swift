/// The fields of Gitaly's `gitaly.Repository` message that a span cares about.
///
/// Field numbers (GITALY-WIRE.md §4): `storage_name` 2, `relative_path` 3, `git_object_directory` 4,
/// `git_alternate_object_directories` 5 (repeated), `gl_repository` 6, `gl_project_path` 8. Absent strings are
/// empty, as in protobuf.
public struct GitalyRepository: Hashable, Sendable {
    /// The storage the repository lives on (`default`, or a Praefect virtual storage).
    public var storageName: String
    /// The path below the storage root, e.g. `@hashed/ab/cd/abcd….git`.
    public var relativePath: String
    /// A quarantine object directory, set while a push is being checked.
    public var gitObjectDirectory: String
    /// Alternate object directories, set with ``gitObjectDirectory``.
    public var gitAlternateObjectDirectories: [String]
    /// GitLab's repository identifier, e.g. `project-1`.
    public var glRepository: String
    /// The human-readable project path, e.g. `group/project`.
    public var glProjectPath: String

    /// Creates a repository value; omitted fields are empty.
    public init(
        storageName: String = "",
        relativePath: String = "",
        gitObjectDirectory: String = "",
        gitAlternateObjectDirectories: [String] = [],
        glRepository: String = "",
        glProjectPath: String = ""
    ) {
        self.storageName = storageName
        self.relativePath = relativePath
        self.gitObjectDirectory = gitObjectDirectory
        self.gitAlternateObjectDirectories = gitAlternateObjectDirectories
        self.glRepository = glRepository
        self.glProjectPath = glProjectPath
    }

    /// The span attribute keys this type produces.
    public enum AttributeKey {
        /// `storage_name`.
        public static let storage = "gitaly.repository.storage"
        /// `relative_path`.
        public static let relativePath = "gitaly.repository.relative_path"
        /// `gl_repository`.
        public static let glRepository = "gitaly.repository.gl_repository"
        /// `gl_project_path`.
        public static let glProjectPath = "gitaly.repository.gl_project_path"
    }

    /// Span attributes for the non-empty identifying fields.
    ///
    /// The object directories are left out: they are per-push temporary paths that only add cardinality.
    public var attributes: SpanAttributes {
        var attributes: SpanAttributes = [:]
        func add(_ key: String, _ value: String) {
            if !value.isEmpty { attributes[key] = .string(value) }
        }
        add(AttributeKey.storage, storageName)
        add(AttributeKey.relativePath, relativePath)
        add(AttributeKey.glRepository, glRepository)
        add(AttributeKey.glProjectPath, glProjectPath)
        return attributes
    }
}
