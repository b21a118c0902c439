{#- minicl itself: the release the config repo pins, checked before it runs (minicl.selfupdate).
    Last in the run: a new release takes over only after everything else was applied. #}
minicl-release:
  minicl_release.pinned:
    - name: minicl
    - order: last
