/* Launches "kernels" through a libcuda (the fake one: helpers/libcuda/fake_libcuda.c), as a
 * CUDA program would, driven by commands on stdin, one per line:
 *
 *   launch N K EX   N launches over K distinct CUfunction handles (round robin), the first EX
 *                   of them through cuLaunchKernelEx, the rest through cuLaunchKernel
 *   time N          N cuLaunchKernel calls, timed: prints the nanoseconds they took
 *   open PATH       open PATH and keep it open (a GPU device, or a file named like one)
 *   thread N K      launch N K from a thread of its own (joined before the answer)
 *   fork N K        launch N K in a forked child (waited for before the answer)
 *
 * Usage: launch_client LIBRARY, or with LAUNCH_LIBRARY set in the environment, any arguments
 * (the tests run it as `ssh -R ...`, a tunnel by its command line). Prints "ready PID" once the
 * library is loaded, and one line per command ("done N", "ns T", "opened FD"); exits at the end
 * of stdin. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*launch_fn)(void *f, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *,
			 void **, void **);
typedef int (*launch_ex_fn)(const void *config, void *f, void **, void **);

struct launch_config {
	unsigned int grid[3], block[3], shared;
	void *stream, *attrs;
	unsigned int num_attrs;
};

static launch_fn launch;
static launch_ex_fn launch_ex;

static void *function_handle(unsigned long i)
{
	return (void *)(uintptr_t)(0x7f0000001000ul + i * 0x40);
}

static void launch_many(unsigned long n, unsigned long k, unsigned long ex)
{
	struct launch_config config = {{1, 1, 1}, {32, 1, 1}, 0, NULL, NULL, 0};
	for (unsigned long i = 0; i < n; i++) {
		void *f = function_handle(i % k);
		if (i < ex)
			launch_ex(&config, f, NULL, NULL);
		else
			launch(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
	}
	printf("done %lu\n", n);
}

struct job {
	unsigned long n, k;
};

static void *launch_job(void *arg)
{
	struct job *job = arg;
	for (unsigned long i = 0; i < job->n; i++)
		launch(function_handle(i % job->k), 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
	return NULL;
}

static void launch_in_thread(unsigned long n, unsigned long k)
{
	struct job job = {n, k};
	pthread_t thread;
	pthread_create(&thread, NULL, launch_job, &job);
	pthread_join(thread, NULL);
	printf("done %lu\n", n);
}

static void launch_in_child(unsigned long n, unsigned long k)
{
	struct job job = {n, k};
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {
		launch_job(&job);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	printf("done %lu\n", n);
}

static void time_launches(unsigned long n)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (unsigned long i = 0; i < n; i++)
		launch(function_handle(0), 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("ns %lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000ll + (b.tv_nsec - a.tv_nsec));
}

int main(int argc, char **argv)
{
	char line[4096], path[4000];
	unsigned long n, k, ex;
	const char *library = getenv("LAUNCH_LIBRARY");
	if (!library && argc != 2) {
		fprintf(stderr, "usage: launch_client LIBRARY\n");
		return 2;
	}
	library = library ? library : argv[1];
	void *lib = dlopen(library, RTLD_NOW);
	if (!lib) {
		fprintf(stderr, "launch_client: %s\n", dlerror());
		return 1;
	}
	launch = (launch_fn)dlsym(lib, "cuLaunchKernel");
	launch_ex = (launch_ex_fn)dlsym(lib, "cuLaunchKernelEx");
	if (!launch || !launch_ex) {
		fprintf(stderr, "launch_client: no launch entry points in %s\n", library);
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready %d\n", getpid());
	while (fgets(line, sizeof(line), stdin)) {
		if (sscanf(line, "launch %lu %lu %lu", &n, &k, &ex) == 3 && k > 0)
			launch_many(n, k, ex);
		else if (sscanf(line, "thread %lu %lu", &n, &k) == 2 && k > 0)
			launch_in_thread(n, k);
		else if (sscanf(line, "fork %lu %lu", &n, &k) == 2 && k > 0)
			launch_in_child(n, k);
		else if (sscanf(line, "time %lu", &n) == 1)
			time_launches(n);
		else if (sscanf(line, "open %3999s", path) == 1)
			printf("opened %d\n", open(path, O_RDONLY));
		else
			printf("unknown command\n");
	}
	return 0;
}
