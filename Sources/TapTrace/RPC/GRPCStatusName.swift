/// Names of gRPC status codes (grpc/grpc `doc/statuscodes.md`).
public enum GRPCStatusName {
    private static let names = [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
        "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ]

    /// The upper-case name of `code`, or `CODE_<n>` for codes outside the registry.
    public static func name(_ code: Int) -> String {
        names.indices.contains(code) ? names[code] : "CODE_\(code)"
    }
}
