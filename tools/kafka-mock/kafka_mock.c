/*
 * kafka_mock.c - a local Kafka cluster for the tests, the walkthrough and the
 * benchmark: librdkafka's mock cluster (rdkafka_mock.h) behind a command.
 *
 *   kafka-mock [--partitions N] [--topic NAME[:N]]... [--brokers B]
 *
 * No Kafka broker is packaged for Debian, but librdkafka ships a mock cluster
 * that speaks the Kafka protocol on loopback, with consumer groups, offset
 * commits and fault injection. It lives inside a librdkafka client handle,
 * so it needs a process of its own to outlive the producers and consumers
 * under test: this one. It prints the bootstrap address as its first line on
 * standard output and runs until SIGINT/SIGTERM or "quit".
 *
 * Fault injection, so that tests can take the cluster away mid-stream:
 *   - signals: SIGUSR1 takes every broker down, SIGUSR2 brings them back;
 *   - standard input, one command a line: "down [ID]", "up [ID]",
 *     "rtt ID MS", "quit" (ID -1 or absent: every broker).
 * "down" closes the brokers' connections and refuses new ones; the topic
 * data stays, as it would on a real cluster whose network went away.
 *
 * Remember that the mock keeps only about the last 5 MB of each partition.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_TOPICS 16

static volatile sig_atomic_t got_stop, got_down, got_up;

static void on_signal(int sig)
{
    if (sig == SIGUSR1) got_down = 1;
    else if (sig == SIGUSR2) got_up = 1;
    else got_stop = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kafka-mock [--partitions N] [--topic NAME[:PARTITIONS]]... [--brokers B]\n"
            "\n"
            "Starts librdkafka's mock Kafka cluster on loopback, creates the topics\n"
            "(default: 'visits' with --partitions partitions, default 2), prints the\n"
            "bootstrap address on the first line of standard output and runs until\n"
            "SIGINT/SIGTERM.\n"
            "\n"
            "Fault injection: SIGUSR1 = every broker down, SIGUSR2 = back up; or commands\n"
            "on standard input: 'down [ID]', 'up [ID]', 'rtt ID MS', 'quit'.\n"
            "The mock keeps only about the last 5 MB of each partition.\n");
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static void set_brokers(rd_kafka_mock_cluster_t *mc, int32_t id, int up)
{
    rd_kafka_resp_err_t e = up ? rd_kafka_mock_broker_set_up(mc, id)
                               : rd_kafka_mock_broker_set_down(mc, id);
    fprintf(stderr, "kafka-mock: broker %s %s%s%s\n", id < 0 ? "all" : "", up ? "up" : "down",
            e ? ": " : "", e ? rd_kafka_err2str(e) : "");
}

static void command(rd_kafka_mock_cluster_t *mc, char *line)
{
    char *save = NULL;
    const char *verb = strtok_r(line, " \t\r\n", &save);
    const char *a1 = strtok_r(NULL, " \t\r\n", &save);
    const char *a2 = strtok_r(NULL, " \t\r\n", &save);
    int id = -1, ms = 0;
    if (!verb) return;
    if (a1 && parse_int(a1, -1, 1000, &id)) {
        fprintf(stderr, "kafka-mock: bad broker id '%s'\n", a1);
        return;
    }
    if (strcmp(verb, "down") == 0) set_brokers(mc, id, 0);
    else if (strcmp(verb, "up") == 0) set_brokers(mc, id, 1);
    else if (strcmp(verb, "rtt") == 0 && a2 && parse_int(a2, 0, 600000, &ms) == 0) {
        rd_kafka_mock_broker_set_rtt(mc, id, ms);
        fprintf(stderr, "kafka-mock: broker %d rtt %d ms\n", id, ms);
    } else if (strcmp(verb, "quit") == 0) got_stop = 1;
    else fprintf(stderr, "kafka-mock: unknown command '%s' (down, up, rtt, quit)\n", verb);
}

int main(int argc, char **argv)
{
    int partitions = 2, brokers = 1, n_topics = 0;
    const char *topics[MAX_TOPICS];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kafka-mock: '%s' needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--partitions") == 0) {
            if (parse_int(v, 1, 10000, &partitions)) {
                fprintf(stderr, "kafka-mock: invalid --partitions '%s'\n", v);
                return 2;
            }
        } else if (strcmp(a, "--brokers") == 0) {
            if (parse_int(v, 1, 32, &brokers)) {
                fprintf(stderr, "kafka-mock: invalid --brokers '%s'\n", v);
                return 2;
            }
        } else if (strcmp(a, "--topic") == 0) {
            if (n_topics == MAX_TOPICS) {
                fprintf(stderr, "kafka-mock: at most %d topics\n", MAX_TOPICS);
                return 2;
            }
            topics[n_topics++] = v;
        } else {
            fprintf(stderr, "kafka-mock: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (n_topics == 0) {
        topics[n_topics++] = "visits";
    }

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The handle only hosts the cluster; keep it quiet. */
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "kafka-mock: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "kafka-mock: cannot start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    for (int i = 0; i < n_topics; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s", topics[i]);
        int np = partitions;
        char *colon = strrchr(name, ':');
        if (colon) {
            *colon = '\0';
            if (parse_int(colon + 1, 1, 10000, &np)) {
                fprintf(stderr, "kafka-mock: invalid partition count in --topic '%s'\n",
                        topics[i]);
                rd_kafka_mock_cluster_destroy(mc);
                rd_kafka_destroy(rk);
                return 2;
            }
        }
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, name, np, brokers < 3 ? brokers : 3);
        if (e) {
            fprintf(stderr, "kafka-mock: cannot create topic '%s': %s\n", name, rd_kafka_err2str(e));
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(rk);
            return 1;
        }
        fprintf(stderr, "kafka-mock: topic %s, %d partitions\n", name, np);
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Commands arrive on stdin; when it is closed (/dev/null, a finished
     * pipe) only the signals remain. */
    int stdin_open = 1;
    char line[256];
    size_t fill = 0;
    while (!got_stop) {
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = poll(&pfd, stdin_open ? 1 : 0, 200);
        if (got_down) got_down = 0, set_brokers(mc, -1, 0);
        if (got_up) got_up = 0, set_brokers(mc, -1, 1);
        if (n <= 0) continue;
        ssize_t r = read(STDIN_FILENO, line + fill, sizeof line - 1 - fill);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            stdin_open = 0;
            continue;
        }
        fill += (size_t)r;
        char *nl;
        while ((nl = memchr(line, '\n', fill)) != NULL) {
            *nl = '\0';
            command(mc, line);
            size_t used = (size_t)(nl - line) + 1;
            memmove(line, nl + 1, fill - used);
            fill -= used;
        }
        if (fill == sizeof line - 1) fill = 0; /* an absurd line: drop it */
    }
    fprintf(stderr, "kafka-mock: stopping\n");
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
