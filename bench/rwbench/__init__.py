"""The rabbitworker benchmark as a package of scenarios (``python bench/run.py --help``).

- :mod:`rwbench.broker`: the management API, the throwaway vhost, pre-loading queues;
- :mod:`rwbench.consumers`: spawning the host, raw aio-pika and FastStream, reading counts;
- :mod:`rwbench.scenario`: what scenarios share (retries, the interleaved drain loop);
- one module per scenario group: :mod:`~rwbench.throughput`, :mod:`~rwbench.dispatch` (with
  :mod:`~rwbench.inprocess`), :mod:`~rwbench.latency`, :mod:`~rwbench.mixed`,
  :mod:`~rwbench.startup`, :mod:`~rwbench.rss`, :mod:`~rwbench.publish`,
  :mod:`~rwbench.competing`;
- :mod:`rwbench.report`: the table; :mod:`rwbench.cli`: options and the run.
"""
