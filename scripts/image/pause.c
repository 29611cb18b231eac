/*
 * The pod sandbox process of the local test node (e2e/cluster): it holds the pod's
 * namespaces, reaps the zombies it inherits as pid 1 and exits on SIGINT or SIGTERM.
 * The same job as Kubernetes' own pause, which cannot be pulled here. Built with
 * `gcc -static` by scripts/image.sh, so the image needs nothing but this file.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
	(void)sig;
	_exit(0);
}

static void on_child(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(void) {
	struct sigaction term = {.sa_handler = on_term};
	struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
	sigaction(SIGINT, &term, NULL);
	sigaction(SIGTERM, &term, NULL);
	sigaction(SIGCHLD, &child, NULL);
	for (;;)
		pause();
}
