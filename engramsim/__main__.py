from engramsim.cli import main

raise SystemExit(main())
