"""Platform limits Google documents, one source for the local cloud (which enforces them) and the
preflight rules (which refuse configs that break them). Every value cites
``../shared/reference/gcp-facts.md`` (section) and Google's own words.
"""

from __future__ import annotations

import re

# ---- Cloud Run (gcp-facts §1, §4.5) ------------------------------------------------------------
# §1.1 "The timeout is set by default to 5 minutes (300 seconds) and can be extended up to 60 minutes
# (3600 seconds)." gcloud's lower bound is 1 s.
RUN_TIMEOUT_MIN_S = 1
RUN_TIMEOUT_MAX_S = 3600
RUN_TIMEOUT_DEFAULT_S = 300
# §1.2 "You can increase this to a maximum of 1,000." / CPU < 1: "Maximum concurrency must be set to 1."
RUN_CONCURRENCY_MAX = 1000
RUN_CONCURRENCY_DEFAULT = 80
# §1.4 ResourceRequirements.limits: "The only supported values for CPU are '1', '2', '4', and '8'.
# Setting 4 CPU requires at least 2Gi of memory." Fractional CPU (< 1) exists in the docs for the
# CPU page (§1.2 "If CPU is below 1"), written in millicores, e.g. "500m".
RUN_CPU_WHOLE_VALUES = ("1", "2", "4", "8")
# §1.7 ContainerPort.name: allowed values are "http1" and "h2c".
RUN_PORT_NAMES = ("http1", "h2c")
# §4.5 "Combined traffic tag and service name cannot exceed 46 characters."
RUN_TAG_PLUS_SERVICE_MAX = 46
# §4.5 Service ID: "only lowercase, digits, and hyphens; must begin with letter, and cannot end with
# hyphen; must be less than 50 characters."
RUN_SERVICE_ID_MAX = 49
# §4.5 gcloud caps revision names at 63 (_MAX_RESOURCE_NAME_LENGTH = 63).
RUN_REVISION_NAME_MAX = 63
# §4.5 "You can set a maximum of 1000 environment variables for a Cloud Run service."
RUN_ENV_MAX = 1000
# §4.5 EnvVar name "Must not exceed 32768 characters"; value "maximum length is 32768 bytes".
RUN_ENV_NAME_MAX = 32768
RUN_ENV_VALUE_MAX_BYTES = 32768
# §4.5 "The environment variables defined in the container runtime contract are reserved and cannot be
# set. In particular, the PORT environment variable is injected inside your container by Cloud Run."
RUN_RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
# §4.5 "Cloud Run API v2 does not support labels with run.googleapis.com, cloud.googleapis.com,
# serving.knative.dev, or autoscaling.knative.dev namespaces, and they will be rejected."
RUN_RESERVED_LABEL_PREFIXES = (
    "run.googleapis.com",
    "cloud.googleapis.com",
    "serving.knative.dev",
    "autoscaling.knative.dev",
)
# §1.6 RevisionScaling.max_instance_count: "When unspecified, the field is set to the server default
# value of 100."
RUN_MAX_INSTANCES_DEFAULT = 100

# ---- Load balancer, serverless NEG (gcp-facts §2) ----------------------------------------------
# §2.1 "Timeout sec is not supported for a backend service with Serverless network endpoint groups."
# (real API: 400 "Invalid value for field 'resource.timeoutSec': '120'. Timeout sec is not supported
# for a backend service with Serverless network endpoint groups.", reason "invalid")
SERVERLESS_NEG_TIMEOUT_MESSAGE = (
    "Timeout sec is not supported for a backend service with Serverless network endpoint groups."
)
# §2.1 "For backend services with serverless NEG backends, the default timeout is 60 minutes. This
# timeout is not configurable."
SERVERLESS_NEG_FIXED_TIMEOUT_S = 3600
# §2.5 "The following hop-by-hop headers must not be used: Keep-Alive, Transfer-Encoding, TE,
# Connection, Trailer, and Upgrade." The global ALB page adds Proxy-Authorization and
# Proxy-Authenticate.
HOP_BY_HOP_HEADERS = (
    "keep-alive",
    "transfer-encoding",
    "te",
    "connection",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
)
# §2.5 "The header name must not begin with X-Google, X-Goog-, X-GFE or X-Amz-."
RESERVED_HEADER_PREFIXES = ("x-google", "x-goog-", "x-gfe", "x-amz-")
# §2.5 "The header name must not be X-User-IP or CDN-Loop." (global page adds "authority")
FORBIDDEN_HEADER_NAMES = ("x-user-ip", "cdn-loop", "authority")
# §2.5 "Maximum number of configured custom request headers for each backend service: 16" and "Total
# size of all custom request headers per backend service (name and value combined, before variable
# expansion): 8 KB."
CUSTOM_HEADERS_MAX = 16
CUSTOM_HEADERS_MAX_BYTES = 8 * 1024
# §2.4 "Specifying a session affinity on a backend service with a serverless NEG backend won't work."
BACKEND_SESSION_AFFINITIES = (
    "NONE",
    "CLIENT_IP",
    "CLIENT_IP_NO_DESTINATION",
    "CLIENT_IP_PORT_PROTO",
    "CLIENT_IP_PROTO",
    "GENERATED_COOKIE",
    "HEADER_FIELD",
    "HTTP_COOKIE",
    "STRONG_COOKIE_AFFINITY",
)
# §5.1 affinityCookieTtlSec: "The maximum allowed value is two weeks (1,209,600)."
AFFINITY_COOKIE_TTL_MAX_S = 1_209_600

# ---- Cloud Armor (gcp-facts §3) ----------------------------------------------------------------
# §3.1 "The priority for each rule must be set to a number from 0 to 2147483646 inclusive. The priority
# value 2147483647, also known as INT-MAX, is reserved for the default rule."
ARMOR_PRIORITY_MIN = 0
ARMOR_PRIORITY_MAX = 2147483646
ARMOR_DEFAULT_RULE_PRIORITY = 2147483647
# §3.4 "An advanced match condition contains an expression with up to five subexpressions"
ARMOR_MAX_SUBEXPRESSIONS = 5
# §3.2 "The value must be 10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, or 3600 seconds."
ARMOR_RATE_LIMIT_INTERVALS_S = (10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)
# §3.2 ban_duration_sec "must be 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, or 3600 seconds."
ARMOR_BAN_DURATIONS_S = (60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)
# §3.2 throttle count: "The minimum value is 1 and the maximum value is 1,000,000."
ARMOR_THROTTLE_COUNT_MAX = 1_000_000
# §3.2 rate_based_ban count: "The minimum value is 1 request and the maximum value is 10,000 requests."
ARMOR_BAN_COUNT_MAX = 10_000
# §3.2 exceed_action: "deny(STATUS), where valid values for STATUS are 403, 404, 429, and 502, and
# redirect"; conform_action: "Valid option is "allow" only."
ARMOR_DENY_STATUSES = (403, 404, 429, 502)
ARMOR_CONFORM_ACTIONS = ("allow",)
# §3.2 enforce_on_key values.
ARMOR_ENFORCE_ON_KEYS = (
    "ALL",
    "IP",
    "HTTP_HEADER",
    "XFF_IP",
    "HTTP_COOKIE",
    "HTTP_PATH",
    "SNI",
    "REGION_CODE",
    "TLS_JA3_FINGERPRINT",
    "TLS_JA4_FINGERPRINT",
    "USER_IP",
)
# §3.2 rule actions that take rate_limit_options ("Must be specified if the action is "rate_based_ban"
# or "throttle" or "fairshare". Cannot be specified for any other actions.")
ARMOR_RATE_LIMIT_ACTIONS = ("throttle", "rate_based_ban", "fairshare")


def deny_action(status: int) -> str:
    """The API spelling of a deny action: ``deny(403)`` (gcloud spells it ``deny-403``)."""
    return f"deny({status})"


ARMOR_DENY_ACTIONS = tuple(deny_action(s) for s in ARMOR_DENY_STATUSES)
# compute.proto SecurityPolicyRule.action (the *rule's* own action, not a rate limit's exceed action):
# "deny(STATUS): deny access to target, returns the HTTP response code specified. Valid values for
# `STATUS` are 403, 404, and 502." (429 is only valid as a rate limit's exceed_action, §3.2.)
ARMOR_RULE_DENY_STATUSES = (403, 404, 502)
ARMOR_RULE_DENY_ACTIONS = tuple(deny_action(s) for s in ARMOR_RULE_DENY_STATUSES)
# compute.proto SecurityPolicyRule.action: allow, deny(STATUS), rate_based_ban, redirect, throttle, and
# "fairshare (preview only): … only allowed in security policies of type CLOUD_ARMOR_INTERNAL_SERVICE."
ARMOR_RULE_ACTIONS = ("allow", *ARMOR_RULE_DENY_ACTIONS, "rate_based_ban", "redirect", "throttle", "fairshare")
# compute.proto SecurityPolicyRuleMatcher.versioned_expr: "SRC_IPS_V1 - must specify the corresponding
# src_ip_range field in config."
ARMOR_VERSIONED_EXPRS = ("SRC_IPS_V1",)
# §3.2 enforce_on_key_configs: "You can specify up to 3 enforce_on_key_configs. If enforce_on_key_configs
# is specified, enforce_on_key must not be specified."
ARMOR_ENFORCE_ON_KEY_CONFIGS_MAX = 3
# §3.1 proto: "If no rules are provided when creating a security policy, a default rule with action
# 'allow' will be added." (The overview page says the default rule's default action is deny; the
# local cloud follows the proto. Always set the default rule explicitly.)
ARMOR_DEFAULT_RULE_ACTION = "allow"

# ---- added for preflight (deployer check) --------------------------------------------------------
# §1.4 ResourceRequirements.limits: "Setting 4 CPU requires at least 2Gi of memory."
RUN_MEMORY_MIN_FOR_4_CPU_BYTES = 2 * 1024**3
# §5.1 BackendServiceLogConfig.sampleRate: "The value of the field must be in [0, 1]. … The default
# value is 1.0."
LB_LOG_SAMPLE_RATE_MIN = 0.0
LB_LOG_SAMPLE_RATE_MAX = 1.0

# ---- Cloud Storage ---------------------------------------------------------------------------------
# Not in gcp-facts.md; Google's "Bucket naming requirements" (cloud.google.com/storage/docs/buckets#naming):
# "Bucket names can only contain lowercase letters, numeric characters, dashes (-), underscores (_), and
# dots (.)", "must start and end with a number or letter", "must contain 3-63 characters" (names with
# dots may be up to 222; the local cloud does not emulate domain-named buckets, so neither do we),
# "Bucket names cannot begin with the "goog" prefix", and no two adjacent dots. One rule for the local
# cloud's storage API (which refuses such a bucket) and the config's ``state.bucket`` (a config error).
GCS_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def gcs_bucket_name_problem(name: str) -> str | None:
    """What breaks Google's bucket naming requirements in ``name`` (None when it is a valid name)."""
    if name.startswith("gs://"):
        return "is a URL; write the bucket's name alone, without gs://"
    if not GCS_BUCKET_NAME.match(name):
        return (
            "is not a valid bucket name: 3-63 characters of lowercase letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    if ".." in name:
        return "is not a valid bucket name: two dots in a row"
    if name.startswith("goog"):
        return "is not a valid bucket name: it may not begin with 'goog'"
    return None
