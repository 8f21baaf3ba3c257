{
  "targets": [
    {
      "target_name": "llmctl_native",
      "sources": ["native/llmctl_native.c"],
      "cflags": ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-fno-math-errno", "-fno-trapping-math", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ]
}
