"""The jobs themselves: plain functions declared with :func:`service.jobs.registry.job`,
and what their routes parse. A task knows its run context, not the layer that runs it."""
