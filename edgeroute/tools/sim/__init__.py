"""A discrete-event simulation of router deployments over synthetic edge sites (pure logic).

``edgeroute simulate`` drives the router's own objects in virtual time: the
decision is :func:`router.decision.decide` (imported, not copied) over the
views of real :class:`~router.estimator.TargetEstimator` objects, which learn,
together with the real :class:`~router.breaker.Breakers` and
:class:`~router.budget.RetryBudget`, from the simulated outcomes of the calls
and probes each replica made, as the routing service feeds them. Only the
clock is virtual; decision time is measured in wall-clock time per call.

The parts, in the order a request meets them:

* :mod:`~edgeroute.tools.sim.synthetic`: the world (1,000 sites with heterogeneous
  network, service time and slots, the cloud, who may serve whom, outages);
* :mod:`~edgeroute.tools.sim.trace`: the requests and every candidate's drawn
  network and service time, the same for every arm (common random numbers);
* :mod:`~edgeroute.tools.sim.engine`: the event loop, the arms (router deployments
  running one named policy each, with one or many replicas) and the oracle;
* :mod:`~edgeroute.tools.sim.replica`: one replica's learning state and probes;
* :mod:`~edgeroute.tools.sim.execute` and :mod:`~edgeroute.tools.sim.world`: a plan run
  as the executor runs it, against each arm's own site queues;
* :mod:`~edgeroute.tools.sim.tally`, :mod:`~edgeroute.tools.sim.console`,
  :mod:`~edgeroute.tools.sim.runner`: figures, tables, and the split of arms over
  worker processes.

What is simplified, and why, is in ``docs/simulator.md``. Nothing here
imports Ray or httpx.
"""
